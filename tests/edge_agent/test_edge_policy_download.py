"""Policy parts reassemble, resume, and refuse what does not fit."""

from __future__ import annotations

import hashlib
import os

import pytest

from edge_agent.policy_download import PolicyDownload
from shared.errors import WeightsError
from shared.protocol import Policy

BLOB = os.urandom(10_000)
SHA = hashlib.sha256(BLOB).hexdigest()


def parts(version: int = 1, size: int = 3000, blob: bytes = BLOB, start: int = 0):
    return [Policy(version, SHA, len(blob), o, blob[o : o + size]) for o in range(start, len(blob), size)]


def test_parts_reassemble_and_report_progress() -> None:
    d = PolicyDownload(1 << 20)
    ps = parts()
    assert d.add(ps[0]) is None and d.partial == (1, 3000)
    for p in ps[1:-1]:
        assert d.add(p) is None
    assert d.add(ps[-1]) == (1, SHA, BLOB)
    assert d.partial == (0, 0)


def test_a_cut_transfer_resumes_from_what_arrived() -> None:
    d = PolicyDownload(1 << 20)
    d.add(parts()[0])
    resumed = parts(start=d.partial[1])
    out = [d.add(p) for p in resumed]
    assert out[-1] == (1, SHA, BLOB)


def test_a_newer_version_replaces_a_partial_one_and_gaps_are_refused() -> None:
    d = PolicyDownload(1 << 20)
    d.add(parts()[0])
    other = os.urandom(500)
    sha2 = hashlib.sha256(other).hexdigest()
    assert d.add(Policy(2, sha2, 500, 0, other)) == (2, sha2, other)
    d.add(parts()[0])
    with pytest.raises(WeightsError, match="expected 3000"):
        d.add(parts()[2])
    with pytest.raises(WeightsError, match="nothing of it"):
        PolicyDownload(1 << 20).add(parts()[1])
    with pytest.raises(WeightsError) as e:
        PolicyDownload(100).add(parts()[0])
    assert e.value.code == "too_large"


def test_parts_land_in_one_buffer_and_the_digest_is_checked_as_they_arrive() -> None:
    d = PolicyDownload(1 << 20)
    ps = parts()
    d.add(ps[0])
    buf = d.buf
    assert len(buf) == len(BLOB)  # allocated once, at the announced size
    for p in ps[1:-1]:
        d.add(p)
        assert d.buf is buf
    version, sha, data = d.add(ps[-1])
    assert data is buf and data == BLOB and (version, sha) == (1, SHA)  # handed over, not copied
    assert d.buf is not buf  # the next download does not write into what was handed over


def test_a_blob_whose_digest_does_not_match_is_refused_and_forgotten() -> None:
    d = PolicyDownload(1 << 20)
    tampered = bytearray(BLOB)
    tampered[-1] ^= 1
    ps = parts(blob=bytes(tampered))
    for p in ps[:-1]:
        assert d.add(p) is None
    with pytest.raises(WeightsError) as e:
        d.add(ps[-1])
    assert e.value.code == "bad_digest"
    assert d.partial == (0, 0)  # nothing to resume: the next hello asks for the whole blob again
    assert [d.add(p) for p in parts()][-1] == (1, SHA, BLOB)


def test_a_part_past_the_announced_size_is_refused() -> None:
    d = PolicyDownload(1 << 20)
    d.add(Policy(1, SHA, 10, 0, b"x" * 6))
    with pytest.raises(WeightsError, match="past its size"):
        d.add(Policy(1, SHA, 10, 6, b"y" * 5))


def _weights_blob():
    import torch

    from shared.weights import encode_weights

    return encode_weights({"w": torch.arange(5000, dtype=torch.float32)}, 3, {"k": 1})


def test_a_download_into_files_is_the_file_the_control_process_maps(tmp_path) -> None:
    from edge_agent.policy_download import PolicyFiles
    from shared.weights import load_weights_file

    blob = _weights_blob()
    files = PolicyFiles(tmp_path / "inbox")
    d = PolicyDownload(1 << 20, buffers=files)
    ps = [Policy(3, blob.sha256, len(blob.data), o, blob.data[o:o + 4096]) for o in range(0, len(blob.data), 4096)]
    for p in ps[:-1]:
        assert d.add(p) is None
    assert (tmp_path / "inbox" / "policy-v3.part").stat().st_size == len(blob.data)  # reserved up front
    version, sha, data = d.add(ps[-1])
    path = files.finish(version)
    assert path.name == "policy-v3.safetensors" and path.read_bytes() == blob.data == data  # no second write
    w = load_weights_file(path, None, 1 << 20)
    path.unlink()  # what the control process does once mapped
    assert w.version == 3 and w.tensors["w"][4999] == 4999.0
    assert list((tmp_path / "inbox").iterdir()) == []


def test_files_of_an_unfinished_download_are_replaced_and_cleared(tmp_path) -> None:
    from edge_agent.policy_download import PolicyFiles

    inbox = tmp_path / "inbox"
    files = PolicyFiles(inbox)
    d = PolicyDownload(1 << 20, buffers=files)
    d.add(parts()[0])
    assert [p.name for p in inbox.iterdir()] == ["policy-v1.part"]
    other = os.urandom(500)
    sha2 = hashlib.sha256(other).hexdigest()
    assert d.add(Policy(2, sha2, 500, 0, other)) is not None  # v2 replaced the unfinished v1
    assert [p.name for p in inbox.iterdir()] == ["policy-v2.part"]
    PolicyFiles(inbox).clear()  # a restarted link process
    assert list(inbox.iterdir()) == []


def test_a_policy_that_cannot_be_held_on_disk_is_a_weights_error(tmp_path) -> None:
    from edge_agent.policy_download import PolicyFiles

    (tmp_path / "inbox").write_text("a file where the inbox should be")
    d = PolicyDownload(1 << 20, buffers=PolicyFiles(tmp_path / "inbox"))
    with pytest.raises(WeightsError) as e:
        d.add(parts()[0])
    assert e.value.code == "disk_error"


def test_a_blob_sent_again_from_its_start_starts_over() -> None:
    d = PolicyDownload(1 << 20)
    ps = parts()
    d.add(ps[0])
    d.add(ps[1])
    assert [d.add(p) for p in ps][-1] == (1, SHA, BLOB)  # the learner began again: no stale bytes, right digest
