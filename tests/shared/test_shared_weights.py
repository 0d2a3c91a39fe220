"""Behaviour tests for the weights format: safetensors + version + arch + sha256."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from shared.errors import FleetError, WeightsError
from shared.weights import FORMAT, Weights, WeightsBlob, decode_weights, encode_weights, sha256

ARCH = {"kind": "mlp", "hidden": [64, 64], "obs_dim": 10, "act_dim": 4, "nested": {"a": None, "b": 1.5}}
LIMIT = 1 << 30


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "pi.0.weight": torch.randn(64, 10, generator=g),
        "pi.0.bias": torch.randn(64, generator=g),
        "log_std": torch.randn(4, generator=g).to(torch.float64),
        "steps": torch.arange(5, dtype=torch.int64),
        "half": torch.randn(3, 3, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0, 4),
    }


@pytest.fixture(scope="module")
def blob() -> WeightsBlob:
    return encode_weights(tensors(), version=12, arch=ARCH)


def raw_blob(header: dict | bytes, data: bytes = b"") -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def decode(data: bytes, max_size: int = LIMIT) -> Weights:
    return decode_weights(data, sha256(data), max_size)


def test_round_trip(blob):
    assert blob.version == 12
    assert blob.sha256 == sha256(blob.data) and len(blob.sha256) == 64
    w = decode_weights(blob.data, blob.sha256, LIMIT)
    assert w.version == 12
    assert w.arch == ARCH
    src = tensors()
    assert set(w.tensors) == set(src)
    for k, v in src.items():
        assert w.tensors[k].dtype == v.dtype and w.tensors[k].shape == v.shape
        assert torch.equal(w.tensors[k], v), k


def test_encode_detaches_and_accepts_non_contiguous():
    t = torch.randn(4, 6, requires_grad=True)
    blob = encode_weights({"w": t.t()}, version=1, arch={})
    w = decode_weights(blob.data, blob.sha256, LIMIT)
    assert torch.equal(w.tensors["w"], t.detach().t())
    assert w.arch == {}


def test_version_is_covered_by_the_digest():
    # (byte-level determinism is not promised: safetensors writes metadata keys in hash-map order)
    a, b = encode_weights(tensors(), 3, ARCH), encode_weights(tensors(), 4, ARCH)
    assert a.sha256 != b.sha256
    assert decode_weights(b.data, b.sha256, LIMIT).version == 4
    with pytest.raises(WeightsError):
        decode_weights(b.data, a.sha256, LIMIT)


def test_sha_mismatch_is_bad_digest(blob):
    err = pytest.raises(WeightsError, decode_weights, blob.data, "0" * 64, LIMIT).value
    assert err.code == "bad_digest"
    err = pytest.raises(WeightsError, decode_weights, blob.data, blob.sha256.upper(), LIMIT).value
    assert err.code == "bad_digest"
    tampered = bytearray(blob.data)
    tampered[-1] ^= 1
    err = pytest.raises(WeightsError, decode_weights, bytes(tampered), blob.sha256, LIMIT).value
    assert err.code == "bad_digest"


def test_size_limit_is_inclusive_and_checked_first(blob):
    n = len(blob.data)
    assert decode_weights(blob.data, blob.sha256, n).version == 12
    err = pytest.raises(WeightsError, decode_weights, blob.data, blob.sha256, n - 1).value
    assert err.code == "too_large"
    err = pytest.raises(WeightsError, decode_weights, blob.data, "bad", n - 1).value
    assert err.code == "too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        b"garbage!garbage!garbage!",
        struct.pack("<Q", 2**63) + b"{}",
        struct.pack("<Q", 10) + b"{}",  # header length past the end
        raw_blob(b"not json"),
        raw_blob(b"\xff\xfe\x00{"),
        raw_blob(b"[1, 2]"),
        raw_blob(b"null"),
        raw_blob({}),
        raw_blob({"__metadata__": "x"}),
        raw_blob({"__metadata__": {}}),
        raw_blob({"__metadata__": {"format": "other", "version": "1", "arch": "{}"}}),
        raw_blob({"__metadata__": {"format": FORMAT, "arch": "{}"}}),
        raw_blob({"__metadata__": {"format": FORMAT, "version": "one", "arch": "{}"}}),
        raw_blob({"__metadata__": {"format": FORMAT, "version": "1"}}),
        raw_blob({"__metadata__": {"format": FORMAT, "version": "1", "arch": "{not json"}}),
        raw_blob({"__metadata__": {"format": FORMAT, "version": "1", "arch": "[1]"}}),
        raw_blob({"__metadata__": {"format": FORMAT, "version": "1", "arch": {"a": 1}}}),
        raw_blob({"__metadata__": {"format": FORMAT, "version": "1", "arch": "{}"},
                  "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\x00" * 8),
        raw_blob({"__metadata__": {"format": FORMAT, "version": "1", "arch": "{}"},
                  "w": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8),
        raw_blob({"__metadata__": {"format": FORMAT, "version": "1", "arch": "{}"},
                  "w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\x00" * 8),
    ],
    ids=lambda d: repr(d[:40]),
)
def test_malformed_blobs_are_weights_errors(data):
    with pytest.raises(WeightsError):
        decode(data)


def test_no_metadata_is_refused():
    data = st_save({"w": torch.zeros(2)})
    with pytest.raises(WeightsError):
        decode(data)


def test_wrong_format_is_refused():
    data = st_save({"w": torch.zeros(2)}, metadata={"format": "pt", "version": "1", "arch": "{}"})
    err = pytest.raises(WeightsError, decode, data).value
    assert "format" in err.message


@pytest.mark.parametrize("cut", [1, 8, 100, 0.5, 0.9])
def test_truncated_blob_is_refused(blob, cut):
    n = int(len(blob.data) * cut) if isinstance(cut, float) else len(blob.data) - cut
    with pytest.raises(WeightsError):
        decode(blob.data[:n])


def test_metadata_only_blob_decodes():
    w = decode(raw_blob({"__metadata__": {"format": FORMAT, "version": "3", "arch": "{\"k\": 1}"}}))
    assert w.version == 3 and w.arch == {"k": 1} and w.tensors == {}


@pytest.mark.parametrize("where", ["header", "arch"])
def test_deeply_nested_json_is_a_weights_error(where):
    deep = "[" * 100_000 + "]" * 100_000
    if where == "header":
        data = raw_blob(deep.encode())
    else:
        data = raw_blob({"__metadata__": {"format": FORMAT, "version": "1", "arch": deep}})
    with pytest.raises(WeightsError):
        decode(data)


@pytest.mark.parametrize("version_json", [b"Infinity", b"1e999", b"-Infinity"])
def test_infinite_version_is_a_weights_error(version_json):
    header = b'{"__metadata__": {"format": "%s", "version": %s, "arch": "{}"}}' % (FORMAT.encode(), version_json)
    with pytest.raises(WeightsError):
        decode(raw_blob(header))


# -------------------------------------------------------------------- fuzz

SMALL = encode_weights({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2, dtype=torch.int32)},
                       version=2, arch={"k": [1, 2]}).data
HEADER_END = 8 + int.from_bytes(SMALL[:8], "little")


@st.composite
def mutated(draw):
    data = bytearray(SMALL)
    for _ in range(draw(st.integers(1, 3))):
        # mostly aim at the header, where the parsing happens
        hi = HEADER_END if draw(st.booleans()) else len(data)
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "length"]))
        if not data:
            break
        i = draw(st.integers(0, max(0, min(hi, len(data)) - 1)))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from(b'0189{}[]",:-.eE \\\xff\x00'))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b'"', b"[", b"{", b"1e999", b"-1"]))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "length" and len(data) >= 8:
            data[:8] = struct.pack("<Q", draw(st.integers(0, len(data) + 16)))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_blobs_decode_or_raise_weights_error(data):
    try:
        w = decode(data, max_size=1 << 20)
    except WeightsError:
        return
    except FleetError as e:  # pragma: no cover - wrong error family
        raise AssertionError(f"expected WeightsError, got {type(e).__name__}") from e
    assert isinstance(w, Weights)
    assert isinstance(w.version, int) and isinstance(w.arch, dict)
    assert all(isinstance(t, torch.Tensor) for t in w.tensors.values())
