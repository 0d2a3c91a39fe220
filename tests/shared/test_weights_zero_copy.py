"""Zero-copy decoding: tensors are views of the blob's own buffer (or of a file mapped
copy-on-write), checked as strictly as safetensors' own loader."""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load

from shared.errors import WeightsError
from shared.weights import FORMAT, all_finite, decode_weights, encode_weights, load_weights_file, sha256

META = {"format": FORMAT, "version": "4", "arch": "{}"}


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"w": torch.randn(33, 7, generator=g), "b": torch.randn(7, generator=g),
            "n": torch.arange(3, dtype=torch.int16), "h": torch.randn(5, generator=g).to(torch.bfloat16),
            "flag": torch.tensor([True, False]), "scalar": torch.tensor(2.5), "none": torch.zeros(0, 3)}


def inside(t: torch.Tensor, buf: bytearray) -> bool:
    base = torch.frombuffer(buf, dtype=torch.uint8).data_ptr()
    return t.numel() == 0 or base <= t.data_ptr() < base + len(buf)


def raw_blob(entries: dict, body: bytes, pad_to: int = 8) -> bytes:
    h = json.dumps({"__metadata__": META, **entries}).encode()
    h += b" " * (-(8 + len(h)) % pad_to)
    return struct.pack("<Q", len(h)) + h + body


def test_a_writable_blob_is_decoded_in_place_and_matches_safetensors():
    blob = encode_weights(tensors(), 4, {"k": 1})
    buf = bytearray(blob.data)
    w = decode_weights(buf, blob.sha256, len(buf))
    ref = st_load(blob.data)
    assert w.version == 4 and w.arch == {"k": 1} and set(w.tensors) == set(ref)
    for k, v in ref.items():
        assert w.tensors[k].dtype == v.dtype and torch.equal(w.tensors[k], v), k
        assert inside(w.tensors[k], buf), f"{k} was copied"
    w.tensors["w"][0, 0] = 123.0  # the caller handed the buffer over: a view, writable
    assert decode_weights(buf, None, len(buf)).tensors["w"][0, 0] == 123.0


def test_read_only_bytes_are_copied_once_and_never_aliased():
    blob = encode_weights(tensors(), 4, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only buffer: it must not be asked to
        w = decode_weights(blob.data, blob.sha256, len(blob.data))
    w.tensors["b"].add_(1.0)
    assert torch.equal(st_load(blob.data)["b"] + 1.0, w.tensors["b"])  # the bytes object is untouched
    view = decode_weights(memoryview(blob.data), blob.sha256, len(blob.data))
    assert torch.equal(view.tensors["w"], tensors()["w"])


def test_no_digest_skips_only_the_hash():
    blob = encode_weights(tensors(), 4, {})
    assert decode_weights(bytearray(blob.data), None, len(blob.data)).version == 4
    with pytest.raises(WeightsError) as e:
        decode_weights(bytearray(blob.data), None, len(blob.data) - 1)
    assert e.value.code == "too_large"
    with pytest.raises(WeightsError, match="format"):
        decode_weights(raw_blob({}, b"").replace(FORMAT.encode(), b"x" * len(FORMAT)), None, 1 << 20)
    with pytest.raises(WeightsError) as e:
        decode_weights(bytearray(blob.data), "0" * 64, len(blob.data))
    assert e.value.code == "bad_digest"


def test_tensors_off_their_dtype_alignment_are_still_read_right():
    body = struct.pack("<3f", 1.0, 2.0, 3.0) + struct.pack("<q", -7)
    data = raw_blob({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                     "b": {"dtype": "I64", "shape": [1], "data_offsets": [12, 20]}}, body, pad_to=1)
    w = decode_weights(bytearray(data), None, 1 << 20)
    assert w.tensors["a"].tolist() == [1.0, 2.0, 3.0] and w.tensors["b"].tolist() == [-7]


@pytest.mark.parametrize("entries,body", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\x00" * 12),  # overlap: two views of one float
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\x00" * 8),  # a gap before it
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 8),  # bytes after the last tensor
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\x00" * 4),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, True]}}, b"\x00" * 4),
    ({"a": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, b"\x00" * 4),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\x00" * 4),
    ({"a": [1, 2]}, b""),
    ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4),
])
def test_offsets_must_tile_the_body_exactly(entries, body):
    with pytest.raises(WeightsError):
        decode_weights(bytearray(raw_blob(entries, body)), None, 1 << 20)


def test_a_file_is_mapped_copy_on_write_and_may_be_unlinked(tmp_path: Path):
    blob = encode_weights(tensors(), 9, {"k": 2})
    path = tmp_path / "p.safetensors"
    path.write_bytes(blob.data)
    w = load_weights_file(path, blob.sha256, len(blob.data))
    path.unlink()  # the mapping keeps the pages
    assert w.version == 9 and torch.equal(w.tensors["w"], tensors()["w"])
    w.tensors["w"].zero_()  # private pages: the file is not written
    path.write_bytes(blob.data)
    again = load_weights_file(str(path), None, len(blob.data))
    assert torch.equal(again.tensors["w"], tensors()["w"])


def test_a_file_is_checked_like_a_blob(tmp_path: Path):
    blob = encode_weights(tensors(), 9, {})
    path = tmp_path / "p.safetensors"
    path.write_bytes(blob.data)
    with pytest.raises(WeightsError) as e:
        load_weights_file(path, blob.sha256, len(blob.data) - 1)
    assert e.value.code == "too_large"
    with pytest.raises(WeightsError) as e:
        load_weights_file(path, sha256(b"other"), len(blob.data))
    assert e.value.code == "bad_digest"
    with pytest.raises(WeightsError, match="cannot read"):
        load_weights_file(tmp_path / "missing", None, 1 << 20)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(WeightsError, match="shorter"):
        load_weights_file(tmp_path / "empty", None, 1 << 20)
    with open(path, "r+b") as f:  # truncated: the header says more than is there
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(WeightsError):
        load_weights_file(path, None, 1 << 20)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_sees_every_non_finite_value(bad):
    t = tensors()
    assert all_finite(t)
    t["w"][32, 6] = bad
    assert not all_finite(t)
    assert not all_finite({"h": torch.tensor([1.0, bad]).to(torch.bfloat16)})
    assert all_finite({"i": torch.arange(4), "e": torch.zeros(0)})
