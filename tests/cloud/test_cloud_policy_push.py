"""A policy goes out while the learner still writes it, and its last part only once it
is on disk; every link sends the same encoded parts. Real app, real websocket, and a
real blocking write: a FIFO squats on the temp file's name, so the write waits for the
test to read it and then fails (a pipe cannot be fsynced)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import torch
from websockets.asyncio.client import connect

from cloud.keys import PUBLISHER
from cloud.policy_frames import PolicyFrames
from cloud.publisher import WeightPublisher
from shared.protocol import Challenge, EdgeConnection, Limits, Policy, Welcome, decode_frame
from shared.protocol.stream import POLICY_PART_BYTES
from shared.weights import WeightsBlob, encode_weights, sha256
from tests.cloud.test_cloud_gateway import SPEC, Robot, serve

TIMEOUT = 10.0


def _blob(version: int, size: int = 256) -> WeightsBlob:
    return encode_weights({"w": torch.randn(size)}, version, {"actor": {"hidden": [size]}})


async def _parked(task: asyncio.Task) -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # a turn of the loop, not a timed wait
    assert not task.done(), "it returned before the write ended"


def _unblock(fifo: Path) -> None:
    """Free a writer stuck opening the FIFO (a test that failed before reading it)."""
    if fifo.exists():
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))


async def test_a_blob_is_offered_while_written_and_a_failed_write_is_never_completed(tmp_path: Path) -> None:
    pub = WeightPublisher(tmp_path / "policy")
    fifo = tmp_path / "policy" / "latest.safetensors.tmp"
    os.mkfifo(fifo)
    v1 = _blob(1)
    try:
        publishing = asyncio.create_task(pub.publish(v1))
        assert await asyncio.wait_for(pub.wait_offered(0), TIMEOUT) is v1  # links start before the write ends
        assert pub.offered == 1 and pub.version == 0
        durable = asyncio.create_task(pub.written(v1))
        waiter = asyncio.create_task(pub.wait_newer(0))
        await _parked(durable)
        await _parked(waiter)
        assert await asyncio.to_thread(fifo.read_bytes) == v1.data  # the write goes on, its fsync fails
        assert not await asyncio.wait_for(publishing, TIMEOUT)
        assert not await asyncio.wait_for(durable, TIMEOUT), "a failed write must not release the last part"
        assert pub.failures == 1 and pub.offered == 0 and not waiter.done()
    finally:
        _unblock(fifo)
    v2 = _blob(2)
    assert await pub.publish(v2) and await pub.written(v2)
    assert await asyncio.wait_for(waiter, TIMEOUT) is v2
    assert await pub.wait_offered(1) is v2
    v3 = _blob(3)
    assert await pub.publish(v3)
    assert not await pub.written(v2), "a newer blob took its place: the link cuts v2"


async def test_a_robot_gets_all_but_the_last_part_until_the_blob_is_on_disk(tmp_path: Path) -> None:
    blob = bytes(range(256)) * ((2 * POLICY_PART_BYTES + 1000) // 256)
    async with serve(tmp_path) as (app, url, _):
        pub = app[PUBLISHER]
        fifo = pub.dir / "latest.safetensors.tmp"
        os.mkfifo(fifo)
        robot = Robot(url, "arm-1")
        robot.conn = EdgeConnection("arm-1", SPEC.to_dict(), [])
        robot.ws = await connect(url, compression=None, max_size=None)  # parts are 4 MiB
        try:
            assert isinstance(await robot.recv(), Challenge)
            await robot.ws.send(robot.conn.hello(0))
            assert isinstance(await robot.recv(), Welcome)
            publishing = asyncio.create_task(pub.publish(WeightsBlob(7, sha256(blob), blob)))
            got = []
            while len(got) < 2:
                msg = await robot.recv()
                if isinstance(msg, Policy):
                    got.append(msg.offset)
            assert got == [0, POLICY_PART_BYTES] and not publishing.done()
            await asyncio.to_thread(fifo.read_bytes)  # the write ends, and fails
            assert not await asyncio.wait_for(publishing, TIMEOUT)
        finally:
            _unblock(fifo)
        small = _blob(8)
        assert await pub.publish(small)
        while not isinstance(msg := await robot.recv(), Policy):
            pass
        assert (msg.version, msg.offset, msg.body) == (8, 0, small.data), "v7's last part was never sent"
        await robot.close()


def test_frames_are_encoded_once_per_part_of_the_newest_blob() -> None:
    frames = PolicyFrames()
    v1, v2 = _blob(1, 4096), _blob(2, 4096)
    first = frames.part(v1, 0, 1000)
    assert frames.part(v1, 0, 1000) is first  # every link sends this very object
    msg = Policy.parse(decode_frame(first, Limits()))
    assert (msg.version, msg.sha256, msg.size, msg.offset, msg.body) == (1, v1.sha256, len(v1.data), 0, v1.data[:1000])
    assert frames.part(v2, 1000, len(v2.data)) is frames.part(v2, 1000, len(v2.data))
    assert frames.cached_bytes < len(first) + len(v2.data), "the older blob's frames were dropped"
    old = frames.part(v1, 1000, 2000)  # a link still on v1: encoded, not cached
    assert old is not frames.part(v1, 1000, 2000) and old == frames.part(v1, 1000, 2000)
