"""Behaviour tests for bounded zstd decompression."""

from __future__ import annotations

import os
import struct
import tracemalloc

import pytest
import zstandard as zstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.compression import compress, decompress
from shared.errors import CompressionError

MAGIC = b"\x28\xb5\x2f\xfd"


def _reheader(frame: bytes, fcs: int | None) -> bytes:
    """Rewrite a frame's header to declare ``fcs`` bytes (8-byte field) or no content size at all.

    Works on frames written by ZstdCompressor for large inputs: FHD with a 4-byte size field,
    no single-segment flag, no dictionary id, so the header is magic | FHD | window | fcs(4).
    """
    fhd = frame[4]
    assert fhd == 0x80, hex(fhd)
    window, blocks = frame[5], frame[10:]
    if fcs is None:
        return MAGIC + bytes([0x00, window]) + blocks
    return MAGIC + bytes([0xC0, window]) + struct.pack("<Q", fcs) + blocks


@pytest.fixture(scope="module")
def zeros_frame():
    return zstd.ZstdCompressor(write_content_size=True).compress(b"\0" * (100 << 20))


@pytest.mark.parametrize("data", [b"", b"x", b"hello world" * 1000, os.urandom(70_000), bytes(range(256)) * 300],
                         ids=["empty", "one-byte", "repetitive", "random-70k", "byte-ramp"])  # stable ids: xdist workers must collect alike
@pytest.mark.parametrize("level", [1, 3, 19])
def test_round_trip(data, level):
    blob = compress(data, level)
    assert blob[:4] == MAGIC
    assert zstd.get_frame_parameters(blob).content_size == len(data)
    assert decompress(blob, max(len(data), 1)) == data


def test_limit_boundary_is_inclusive():
    data = b"abc" * 1000
    blob = compress(data)
    assert decompress(blob, len(data)) == data
    err = pytest.raises(CompressionError, decompress, blob, len(data) - 1).value
    assert err.code == "too_large"
    assert decompress(compress(b""), 0) == b""


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except CompressionError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_frame_declaring_10_gb_is_refused_before_work(zeros_frame):
    bomb = _reheader(zeros_frame, 10 * 2**30)
    assert zstd.get_frame_parameters(bomb).content_size == 10 * 2**30
    assert len(bomb) < 10_000
    err = pytest.raises(CompressionError, decompress, bomb, 1 << 20).value
    assert err.code == "too_large"
    assert _peak(lambda: decompress(bomb, 1 << 20)) < 1 << 20


def test_frame_without_content_size_is_refused_with_bounded_memory(zeros_frame):
    bomb = _reheader(zeros_frame, None)
    assert zstd.get_frame_parameters(bomb).content_size == zstd.CONTENTSIZE_UNKNOWN
    # a plain decompressor would happily inflate it to 100 MiB
    assert len(zstd.ZstdDecompressor().decompressobj().decompress(bomb)) == 100 << 20
    with pytest.raises(CompressionError):
        decompress(bomb, 1 << 20)
    assert _peak(lambda: decompress(bomb, 1 << 20)) < 4 << 20


def test_frame_lying_about_its_size_is_refused_with_bounded_memory(zeros_frame):
    liar = _reheader(zeros_frame, 1000)  # declares 1000 bytes, holds 100 MiB
    with pytest.raises(CompressionError):
        decompress(liar, 1 << 20)
    assert _peak(lambda: decompress(liar, 1 << 20)) < 4 << 20
    at_limit = _reheader(zeros_frame, 1 << 20)  # declares exactly the limit, holds far more
    with pytest.raises(CompressionError):
        decompress(at_limit, 1 << 20)
    assert _peak(lambda: decompress(at_limit, 1 << 20)) < 4 << 20


def test_real_bomb_with_declared_size_is_refused(zeros_frame):
    assert len(zeros_frame) < 10_000
    err = pytest.raises(CompressionError, decompress, zeros_frame, 1 << 20).value
    assert err.code == "too_large"


@pytest.mark.parametrize("tail", [b"\x00", b"garbage", None])
def test_trailing_bytes_are_refused(tail):
    blob = compress(b"payload" * 10)
    extra = compress(b"second frame") if tail is None else tail
    with pytest.raises(CompressionError):
        decompress(blob + extra, 1 << 20)


SKIPPABLE = b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"abcd"


def test_leading_skippable_frame_is_refused():
    with pytest.raises(CompressionError):
        decompress(SKIPPABLE + compress(b"payload" * 10), 1 << 20)


def test_trailing_skippable_frame_is_refused():
    with pytest.raises(CompressionError):
        decompress(compress(b"payload" * 10) + SKIPPABLE, 1 << 20)


@pytest.mark.parametrize("data", [b"", b"\x28", MAGIC, b"not zstd at all", b"\x00" * 64])
def test_empty_and_non_zstd_input_are_refused(data):
    with pytest.raises(CompressionError):
        decompress(data, 1 << 20)


@pytest.mark.parametrize("cut", [1, 3, 10, 100])
def test_truncated_frame_is_refused(cut):
    blob = compress(os.urandom(5000))
    with pytest.raises(CompressionError):
        decompress(blob[:-cut], 1 << 20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.data())
def test_fuzz_mutated_frames_give_bytes_or_compression_error(payload, data):
    blob = bytearray(compress(payload))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(blob) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del blob[i:]
            if not blob:
                break
        else:
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        out = decompress(bytes(blob), 4096)
    except CompressionError:
        return
    assert isinstance(out, bytes) and len(out) <= 4096
