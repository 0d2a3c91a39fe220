"""The weight publisher in process, on a real directory: what it keeps on disk,
whom it wakes, and that versions only go forward. A full disk (every write
failing with ENOSPC, counted and recovered) is tests/faults/test_faults_disk.py's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import torch

from cloud.publisher import WeightPublisher
from shared.weights import WeightsBlob, encode_weights


def _blob(version: int, size: int = 256) -> WeightsBlob:
    """Real weights (safetensors with a version in its header), random values."""
    return encode_weights({"w": torch.randn(size)}, version, {"actor": {"hidden": [size]}})


async def _parked(task: asyncio.Task) -> None:
    """Let the loop run until nothing else is ready: a waiter that is still pending is waiting."""
    for _ in range(5):
        await asyncio.sleep(0)  # a turn of the loop, not a timed wait
    assert not task.done(), "the waiter returned without a newer version"


async def test_publish_persists_and_a_restarted_publisher_serves_it(tmp_path: Path) -> None:
    pub = WeightPublisher(tmp_path / "policy")
    assert pub.version == 0 and pub.latest is None
    blob = _blob(3)
    assert await pub.publish(blob)
    assert pub.version == 3 and pub.latest == blob
    assert sorted(p.name for p in (tmp_path / "policy").iterdir()) == ["latest.json", "latest.safetensors"]
    assert json.loads((tmp_path / "policy" / "latest.json").read_text()) == {"version": 3, "sha256": blob.sha256}
    again = WeightPublisher(tmp_path / "policy")
    assert again.latest == blob, "a restarted learner serves the newest policy at once"


async def test_a_damaged_stored_policy_is_not_served(tmp_path: Path, caplog) -> None:
    pub = WeightPublisher(tmp_path / "policy")
    await pub.publish(_blob(2))
    path = tmp_path / "policy" / "latest.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # rot in the tensor bytes: the header still reads, the digest does not match
    path.write_bytes(bytes(data))
    assert WeightPublisher(tmp_path / "policy").latest is None
    assert "event=stored_policy_corrupt" in caplog.text


async def test_wait_newer_wakes_waiters_and_a_late_one_skips_to_the_newest(tmp_path: Path) -> None:
    pub = WeightPublisher(tmp_path / "policy")
    early = asyncio.create_task(pub.wait_newer(0))
    await _parked(early)
    v1 = _blob(1)
    await pub.publish(v1)
    assert await asyncio.wait_for(early, 10) == v1

    up_to_date = asyncio.create_task(pub.wait_newer(1))
    await _parked(up_to_date)
    await pub.publish(_blob(2))
    v3 = _blob(3)
    await pub.publish(v3)
    assert (await asyncio.wait_for(up_to_date, 10)).version in (2, 3)
    assert await asyncio.wait_for(pub.wait_newer(1), 10) == v3, "a robot that was away gets the newest, not the next"


async def test_versions_only_go_forward(tmp_path: Path) -> None:
    pub = WeightPublisher(tmp_path / "policy")
    v5 = _blob(5)
    assert await pub.publish(v5)
    waiter = asyncio.create_task(pub.wait_newer(5))
    assert not await pub.publish(_blob(5)), "the same version again"
    assert not await pub.publish(_blob(4)), "an older version"
    await _parked(waiter)
    assert pub.latest == v5 and WeightPublisher(tmp_path / "policy").latest == v5, "disk still holds v5"
    # Concurrent publishes are written one at a time; whichever order they land in, the newest stays.
    results = await asyncio.gather(pub.publish(_blob(7)), pub.publish(_blob(6)))
    assert results == [True, False] and pub.version == 7
    assert (await asyncio.wait_for(waiter, 10)).version == 7
    assert WeightPublisher(tmp_path / "policy").version == 7
    assert pub.failures == 0


async def test_a_publish_whose_write_fails_wakes_no_one_and_the_next_goes_out(tmp_path: Path) -> None:
    """The data file cannot be written (a directory squats on its temp name: a real OSError,
    unlike the full disk of the fault suite): robots stay on the last good version."""
    pub = WeightPublisher(tmp_path / "policy")
    v1 = _blob(1)
    await pub.publish(v1)
    waiter = asyncio.create_task(pub.wait_newer(1))
    squat = tmp_path / "policy" / "latest.safetensors.tmp"
    squat.mkdir()
    assert not await pub.publish(_blob(2))
    assert pub.version == 1 and pub.failures == 1 and pub.last_error.startswith("v2: IsADirectoryError")
    await _parked(waiter)
    assert WeightPublisher(tmp_path / "policy").latest == v1, "what is on disk is still v1, whole"
    squat.rmdir()
    v3 = _blob(3)
    assert await pub.publish(v3) and pub.last_error == ""
    assert await asyncio.wait_for(waiter, 10) == v3


async def test_a_failure_between_the_data_and_its_meta_leaves_a_loadable_policy(tmp_path: Path) -> None:
    """The blob and its JSON are replaced one after the other: a failure (or a kill -9) between
    the two must not send a restarted learner back to version 0, below what robots already run."""
    pub = WeightPublisher(tmp_path / "policy")
    await pub.publish(_blob(1))
    (tmp_path / "policy" / "latest.json.tmp").mkdir()  # the second of the two writes fails
    assert not await pub.publish(_blob(2))
    assert pub.version == 1 and pub.failures == 1
    assert WeightPublisher(tmp_path / "policy").version >= 1, "a restart must not go back to version 0"


async def test_a_blob_newer_than_its_json_is_served_with_its_own_version(tmp_path: Path, caplog) -> None:
    """Killed (or out of space) between the blob's write and the JSON's: the complete newer blob wins,
    so a restart never serves an older policy nor reuses version numbers robots already hold."""
    import torch

    from shared.weights import encode_weights

    pub = WeightPublisher(tmp_path / "policy")
    arch = {"kind": "test"}
    await pub.publish(encode_weights({"w": torch.zeros(3)}, 4, arch))
    newer = encode_weights({"w": torch.ones(3)}, 9, arch)
    (tmp_path / "policy" / "latest.safetensors").write_bytes(newer.data)  # the JSON still says v4
    again = WeightPublisher(tmp_path / "policy")
    assert again.version == 9 and again.latest == newer
    assert "event=stored_policy_recovered" in caplog.text
    (tmp_path / "policy" / "latest.json").unlink()
    assert WeightPublisher(tmp_path / "policy").version == 9, "a missing JSON is the same case"
