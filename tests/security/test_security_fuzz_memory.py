"""Every decoder that faces the network or the disk, fed random and mutated
bytes: it decodes or raises our own error, never hangs, and memory stays bounded.
(Structured fuzzing of each decoder lives beside it in tests/shared/.)"""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.chunk import StepRecord, build_batch, decode_chunk, encode_chunk
from shared.compression import decompress
from shared.errors import FleetError
from shared.protocol import CloudConnection, EdgeConnection, Limits, decode_frame
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import decode_weights, sha256

SPEC = EpisodeSpec({"s": FieldSpec((4,)), "cam": FieldSpec((8, 8, 3), "uint8", "png")}, 2)
LIMITS = Limits(max_frame_bytes=1 << 20, max_decompressed_bytes=1 << 20)
_obs = {"s": np.zeros(4, np.float32), "cam": np.zeros((8, 8, 3), np.uint8)}
VALID_CHUNK = encode_chunk(build_batch(SPEC, "r", "e", [StepRecord(_obs, np.zeros(2), 0.0, _obs, False, False)]))


def _decoders(data: bytes) -> None:
    for fn in (
        lambda: decode_frame(data, LIMITS),
        lambda: decompress(data, 1 << 20),
        lambda: decode_chunk(data, SPEC, max_decompressed=1 << 20, max_rows=100),
        lambda: decode_weights(data, sha256(data), 1 << 20),
        lambda: _cloud().receive(data),
        lambda: _edge().receive(data),
    ):
        try:
            fn()
        except FleetError:
            pass


def _cloud() -> CloudConnection:
    c = CloudConnection(LIMITS)
    c.challenge()
    return c


def _edge() -> EdgeConnection:
    return EdgeConnection("r", SPEC.to_dict(), [], LIMITS)


@st.composite
def hostile(draw) -> bytes:
    base = draw(st.sampled_from([b"", VALID_CHUNK, b"FL\x01\x03" + bytes(8), b"\x28\xb5\x2f\xfd"]))
    data = bytearray(base + draw(st.binary(max_size=256)))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=1500, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(hostile())
def test_decoders_refuse_hostile_bytes_within_bounded_memory(data: bytes) -> None:
    tracemalloc.start()
    try:
        _decoders(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"decoding {len(data)} hostile bytes peaked at {peak} bytes"
