"""Behaviour tests for episode chunks (build_batch -> encode_chunk -> decode_chunk) and the episode schema."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import zstandard as zstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.chunk import StepRecord, build_batch, checksum, decode_chunk, encode_chunk, single_value
from shared.compression import compress
from shared.errors import CompressionError, FleetError, SchemaError
from shared.image_codec import decode_image, encode_image
from shared.schema import SCHEMA_VERSION, EpisodeSpec, FieldSpec

H, W = 16, 12
SPEC = EpisodeSpec(
    {
        "joints": FieldSpec((7,)),
        "pose": FieldSpec((2, 3)),
        "cam_raw": FieldSpec((H, W, 3), "uint8", codec="raw"),
        "cam_png": FieldSpec((H, W, 1), "uint8", codec="png"),
        "cam_jpg": FieldSpec((H, W, 3), "uint8", codec="jpeg", quality=95),
    },
    action_dim=4,
    action_low=(-1.0,) * 4,
    action_high=(1.0,) * 4,
)
STATE_SPEC = EpisodeSpec({"joints": FieldSpec((7,))}, action_dim=2)
LIMITS = dict(max_decompressed=16 << 20, max_rows=1000)


def _obs(rng, spec: EpisodeSpec, i: int):
    out = {}
    for name, fs in spec.observation.items():
        if fs.is_image:
            if fs.codec == "jpeg":
                # smooth image: JPEG keeps it close
                yy, xx = np.mgrid[0:H, 0:W]
                img = np.stack([(yy * 8 + i) % 256, (xx * 10) % 256, np.full_like(xx, 128)], axis=-1)
                out[name] = img.astype(np.uint8)
            else:
                out[name] = rng.integers(0, 256, fs.shape, dtype=np.uint8)
        else:
            out[name] = rng.standard_normal(fs.shape).astype(np.float32)
    return out


def make_steps(n: int, spec: EpisodeSpec = SPEC, seed: int = 0) -> list[StepRecord]:
    """n consecutive steps; step i's next observation is step i+1's observation, as a robot records them."""
    rng = np.random.default_rng(seed)
    obs = [_obs(rng, spec, i) for i in range(n + 1)]
    steps = []
    for i in range(n):
        steps.append(
            StepRecord(
                obs=obs[i],
                action=rng.uniform(-1, 1, spec.action_dim).astype(np.float32),
                reward=float(i) * 0.5,
                next_obs=obs[i + 1],
                terminated=i == n - 1,
                truncated=False,
                success=i % 2 == 0,
                intervention=i % 3 == 0,
                policy_version=7,
                step=i,
                t_ns=1_700_000_000_000_000_000 + i,
            )
        )
    return steps


def ipc_bytes(*batches: pa.RecordBatch, schema: pa.Schema | None = None, **options) -> bytes:
    sink = pa.BufferOutputStream()
    schema = schema or batches[0].schema
    opts = pa.ipc.IpcWriteOptions(**options) if options else None
    with pa.ipc.new_stream(sink, schema, options=opts) as w:
        for b in batches:
            w.write_batch(b)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def steps():
    return make_steps(5)


@pytest.fixture(scope="module")
def body(steps):
    return encode_chunk(build_batch(SPEC, "robot-1", "ep-1", steps))


# ------------------------------------------------------------- round trip


def test_round_trip_all_columns(steps, body):
    batch = decode_chunk(body, SPEC, **LIMITS)
    assert batch.num_rows == 5
    assert batch.schema.names == SPEC.arrow_schema().names
    assert single_value(batch, "robot_id") == "robot-1"
    assert single_value(batch, "episode_id") == "ep-1"
    assert batch.column("step").to_pylist() == [s.step for s in steps]
    assert batch.column("t_ns").to_pylist() == [s.t_ns for s in steps]
    assert batch.column("policy_version").to_pylist() == [7] * 5
    assert batch.column("reward").to_pylist() == pytest.approx([s.reward for s in steps])
    for flag in ("terminated", "truncated", "success", "intervention"):
        assert batch.column(flag).to_pylist() == [getattr(s, flag) for s in steps]
    act = np.asarray(batch.column("action").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(act, np.stack([s.action for s in steps]))
    for prefix, attr in (("obs.", "obs"), ("next_obs.", "next_obs")):
        for name in ("joints", "pose"):
            got = np.asarray(batch.column(prefix + name).to_pylist(), dtype=np.float32)
            want = np.stack([getattr(s, attr)[name].reshape(-1) for s in steps])
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["cam_raw", "cam_png"])
def test_lossless_image_codecs_round_trip_exactly(steps, body, name):
    batch = decode_chunk(body, SPEC, **LIMITS)
    fs = SPEC.observation[name]
    for i, raw in enumerate(batch.column("obs." + name).to_pylist()):
        img = decode_image(raw, fs)
        assert img.shape == fs.shape and img.dtype == np.uint8
        np.testing.assert_array_equal(img, steps[i].obs[name])
    # frames stored once: the chunk's final frame only; the others are the next rows' obs frames
    nxt = batch.column("next_obs." + name).to_pylist()
    assert nxt[:-1] == [None] * (len(steps) - 1)
    np.testing.assert_array_equal(decode_image(nxt[-1], fs), steps[-1].next_obs[name])


def test_jpeg_codec_round_trips_approximately(steps, body):
    batch = decode_chunk(body, SPEC, **LIMITS)
    fs = SPEC.observation["cam_jpg"]
    for i, raw in enumerate(batch.column("obs.cam_jpg").to_pylist()):
        assert raw[:2] == b"\xff\xd8"  # a real JPEG
        img = decode_image(raw, fs)
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        diff = np.abs(img.astype(int) - steps[i].obs["cam_jpg"].astype(int))
        assert diff.mean() < 6, diff.mean()


def test_image_columns_use_codec_dependent_types(body):
    batch = decode_chunk(body, SPEC, **LIMITS)
    assert batch.schema.field("obs.cam_raw").type == pa.binary(H * W * 3)
    assert batch.schema.field("obs.cam_png").type == pa.binary()
    png = batch.column("obs.cam_png")[0].as_py()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_decoded_batch_carries_schema_metadata(body):
    batch = decode_chunk(body, SPEC, **LIMITS)
    assert batch.schema.metadata == {b"fleetrl.schema_version": str(SCHEMA_VERSION).encode()}
    meta = batch.schema.field("obs.cam_png").metadata
    assert meta[b"codec"] == b"png" and meta[b"shape"] == f"{H},{W},1".encode() and meta[b"dtype"] == b"uint8"


def test_chunk_is_zstd_with_declared_size(body):
    params = zstd.get_frame_parameters(body)
    assert params.content_size not in (0, zstd.CONTENTSIZE_UNKNOWN)
    assert checksum(body) == checksum(bytes(body))
    assert checksum(body) != checksum(body[:-1])
    assert 0 <= checksum(body) <= 0xFFFFFFFF


def test_build_batch_refuses_empty_and_misshapen_steps():
    with pytest.raises(SchemaError):
        build_batch(SPEC, "r", "e", [])
    bad = make_steps(1)
    bad[0].obs["cam_raw"] = np.zeros((H, W, 4), np.uint8)
    with pytest.raises(SchemaError):
        build_batch(SPEC, "r", "e", bad)
    bad = make_steps(1)
    bad[0].obs["cam_png"] = np.zeros((H, W, 1), np.float32)
    with pytest.raises(SchemaError):
        build_batch(SPEC, "r", "e", bad)


def test_max_rows_boundary(steps, body):
    assert decode_chunk(body, SPEC, max_decompressed=16 << 20, max_rows=5).num_rows == 5
    with pytest.raises(SchemaError):
        decode_chunk(body, SPEC, max_decompressed=16 << 20, max_rows=4)


# --------------------------------------------------------------- refusals


def test_wrong_spec_missing_column_is_named(body):
    other = EpisodeSpec({"joints": FieldSpec((7,)), "gripper": FieldSpec((1,))}, action_dim=4)
    err = pytest.raises(SchemaError, decode_chunk, body, other, **LIMITS).value
    assert "obs.gripper" in err.message


def test_wrong_spec_shape_names_the_column():
    body = encode_chunk(build_batch(STATE_SPEC, "r", "e", make_steps(3, STATE_SPEC)))
    other = EpisodeSpec({"joints": FieldSpec((6,))}, action_dim=2)
    err = pytest.raises(SchemaError, decode_chunk, body, other, **LIMITS).value
    assert "obs.joints" in err.message
    other = EpisodeSpec({"joints": FieldSpec((7,))}, action_dim=3)
    err = pytest.raises(SchemaError, decode_chunk, body, other, **LIMITS).value
    assert "action" in err.message


def test_wrong_image_codec_is_refused():
    spec_raw = EpisodeSpec({"cam": FieldSpec((4, 4, 3), "uint8", codec="raw")}, action_dim=1)
    spec_png = EpisodeSpec({"cam": FieldSpec((4, 4, 3), "uint8", codec="png")}, action_dim=1)
    body = encode_chunk(build_batch(spec_png, "r", "e", make_steps(2, spec_png)))
    err = pytest.raises(SchemaError, decode_chunk, body, spec_raw, **LIMITS).value
    assert "obs.cam" in err.message


def test_nullable_column_is_refused():
    batch = build_batch(STATE_SPEC, "r", "e", make_steps(2, STATE_SPEC))
    schema = batch.schema.set(batch.schema.get_field_index("reward"), pa.field("reward", pa.float32(), nullable=True))
    body = compress(ipc_bytes(pa.RecordBatch.from_arrays(batch.columns, schema=schema)))
    err = pytest.raises(SchemaError, decode_chunk, body, STATE_SPEC, **LIMITS).value
    assert "reward" in err.message


def test_nulls_in_non_nullable_columns_are_refused():
    batch = build_batch(STATE_SPEC, "r", "e", make_steps(2, STATE_SPEC))
    cols = list(batch.columns)
    i = batch.schema.get_field_index("reward")
    cols[i] = pa.array([1.0, None], pa.float32())
    sneaky = pa.RecordBatch.from_arrays(cols, schema=batch.schema)
    with pytest.raises(SchemaError):
        decode_chunk(compress(ipc_bytes(sneaky)), STATE_SPEC, **LIMITS)


def test_corrupt_zstd_is_refused(body):
    data = bytearray(body)
    for i in range(20, len(data) - 4, 7):
        data[i] ^= 0xFF
    with pytest.raises(FleetError):
        decode_chunk(bytes(data), SPEC, **LIMITS)


def test_declared_size_over_limit_is_refused_early(body):
    raw_size = zstd.get_frame_parameters(body).content_size
    err = pytest.raises(CompressionError, decode_chunk, body, SPEC, max_decompressed=raw_size - 1, max_rows=1000).value
    assert err.code == "too_large"
    assert decode_chunk(body, SPEC, max_decompressed=raw_size, max_rows=1000).num_rows == 5


def test_zstd_bomb_is_refused():
    bomb = compress(b"\0" * (64 << 20))
    assert len(bomb) < 64 << 10
    err = pytest.raises(CompressionError, decode_chunk, bomb, STATE_SPEC, max_decompressed=1 << 20, max_rows=10).value
    assert err.code == "too_large"


def test_frame_without_declared_size_is_refused(body):
    raw = zstd.ZstdDecompressor().decompress(body)
    undeclared = zstd.ZstdCompressor(write_content_size=False).compress(raw)
    assert zstd.get_frame_parameters(undeclared).content_size == zstd.CONTENTSIZE_UNKNOWN
    with pytest.raises(CompressionError):
        decode_chunk(undeclared, SPEC, **LIMITS)


@pytest.mark.parametrize("keep", [0, 3, 10, 0.5, -1])
def test_truncated_body_is_refused(body, keep):
    n = int(len(body) * keep) if isinstance(keep, float) else (len(body) + keep if keep < 0 else keep)
    with pytest.raises(FleetError):
        decode_chunk(body[:n], SPEC, **LIMITS)


def test_truncated_arrow_stream_is_refused(body):
    raw = zstd.ZstdDecompressor().decompress(body)
    for n in (len(raw) // 3, len(raw) // 2, len(raw) - 9):
        with pytest.raises(SchemaError):
            decode_chunk(compress(raw[:n]), SPEC, **LIMITS)


@pytest.mark.parametrize("payload", [b"", b"hello world", b"\xff" * 100, b'{"robot_id": "r"}'])
def test_non_arrow_payload_is_refused(payload):
    with pytest.raises(SchemaError):
        decode_chunk(compress(payload), STATE_SPEC, **LIMITS)


def test_two_batches_are_refused():
    batch = build_batch(STATE_SPEC, "r", "e", make_steps(2, STATE_SPEC))
    err = pytest.raises(SchemaError, decode_chunk, compress(ipc_bytes(batch, batch)), STATE_SPEC, **LIMITS).value
    assert "2" in err.message


def test_stream_without_batches_is_refused():
    with pytest.raises(SchemaError):
        decode_chunk(compress(ipc_bytes(schema=STATE_SPEC.arrow_schema())), STATE_SPEC, **LIMITS)


def test_zero_row_batch_is_refused():
    batch = build_batch(STATE_SPEC, "r", "e", make_steps(2, STATE_SPEC)).slice(0, 0)
    with pytest.raises(SchemaError):
        decode_chunk(compress(ipc_bytes(batch)), STATE_SPEC, **LIMITS)


def test_ipc_buffer_compression_cannot_bypass_the_size_limit():
    spec = EpisodeSpec({"state": FieldSpec((4096,))}, action_dim=2)
    zeros = np.zeros(4096, np.float32)
    steps = [
        StepRecord(obs={"state": zeros}, action=np.zeros(2), reward=0.0, next_obs={"state": zeros},
                   terminated=False, truncated=False, step=i)
        for i in range(1000)
    ]
    batch = build_batch(spec, "r", "e", steps)
    body = compress(ipc_bytes(batch, compression="zstd"))
    limit = 1 << 20
    assert len(body) < limit and batch.nbytes > 16 * limit
    try:
        out = decode_chunk(body, spec, max_decompressed=limit, max_rows=10_000)
    except FleetError:
        return
    assert out.nbytes <= limit, f"decoded {out.nbytes} bytes under a {limit}-byte limit"


def test_non_utf8_column_name_is_a_schema_error():
    raw = ipc_bytes(build_batch(STATE_SPEC, "r", "e", make_steps(2, STATE_SPEC)))
    assert raw.count(b"episode_id") == 1
    bad = raw.replace(b"episode_id", b"episode\xffid")
    with pytest.raises(SchemaError):
        decode_chunk(compress(bad), STATE_SPEC, **LIMITS)


# ------------------------------------------------------------ single_value


def test_single_value():
    batch = build_batch(STATE_SPEC, "robot-9", "ep-3", make_steps(3, STATE_SPEC))
    assert single_value(batch, "robot_id") == "robot-9"
    assert single_value(batch, "episode_id") == "ep-3"
    cols = list(batch.columns)
    cols[0] = pa.array(["robot-9", "robot-9", "robot-8"])
    mixed = pa.RecordBatch.from_arrays(cols, schema=batch.schema)
    err = pytest.raises(SchemaError, single_value, mixed, "robot_id").value
    assert "robot_id" in err.message
    with pytest.raises(SchemaError):
        single_value(batch, "step")


# ------------------------------------------------------------------ schema


def test_arrow_schema_layout():
    schema = SPEC.arrow_schema()
    assert schema.metadata == {b"fleetrl.schema_version": str(SCHEMA_VERSION).encode()}
    assert schema.names[:5] == ["robot_id", "episode_id", "step", "t_ns", "policy_version"]
    assert schema.names[-10:] == ["action", "reward", "terminated", "truncated", "success", "intervention",
                                  "policy_action", "human_reward", "demo", "chunk_index"]
    for name in SPEC.observation:
        assert f"obs.{name}" in schema.names and f"next_obs.{name}" in schema.names
    nullable = {f.name for f in schema if f.nullable}
    assert nullable == {"next_obs.cam_raw", "next_obs.cam_png", "next_obs.cam_jpg", "chunk_index"}  # frames once
    # one frame per chunk: variable binary, so null rows hold no bytes (fixed-size binary would zero-fill them)
    assert all(schema.field(f"next_obs.{c}").type == pa.binary() for c in ("cam_raw", "cam_png", "cam_jpg"))
    assert schema.field("obs.pose").type == pa.list_(pa.float32(), 6)
    assert schema.field("obs.pose").metadata == {b"shape": b"2,3", b"dtype": b"float32"}
    assert schema.field("obs.cam_raw").metadata[b"codec"] == b"raw"
    assert schema.field("action").type == pa.list_(pa.float32(), 4)
    assert schema.field("step").type == pa.int32() and schema.field("t_ns").type == pa.int64()
    assert SPEC.state_fields == ["joints", "pose"]
    assert SPEC.state_dim() == 13 and SPEC.state_dim(["pose"]) == 6


def test_spec_dict_round_trip():
    d = SPEC.to_dict()
    assert d["version"] == SCHEMA_VERSION
    again = EpisodeSpec.from_dict(d)
    assert again == SPEC
    assert again.to_dict() == d
    assert again.arrow_schema().equals(SPEC.arrow_schema(), check_metadata=True)


def _spec_dict(**over):
    d = STATE_SPEC.to_dict()
    d.update(over)
    return d


@pytest.mark.parametrize(
    "d",
    [
        None,
        [1, 2],
        _spec_dict(version=SCHEMA_VERSION + 1),
        _spec_dict(version="1"),
        {k: v for k, v in _spec_dict().items() if k != "version"},
        _spec_dict(observation=[]),
        _spec_dict(observation={}),
        _spec_dict(observation={"a b": {"shape": [3]}}),
        _spec_dict(observation={"a.b": {"shape": [3]}}),
        _spec_dict(observation={"": {"shape": [3]}}),
        _spec_dict(observation={"a/b": {"shape": [3]}}),
        _spec_dict(observation={"cam": {"shape": [4, 4], "dtype": "uint8"}}),
        _spec_dict(observation={"cam": {"shape": [4, 4, 3, 1], "dtype": "uint8"}}),
        _spec_dict(observation={"cam": {"shape": [4, 4, 3], "dtype": "uint8", "codec": "webp"}}),
        _spec_dict(observation={"s": {"shape": [3], "dtype": "float64"}}),
        _spec_dict(observation={"s": {"shape": [0]}}),
        _spec_dict(observation={"s": {"shape": [-3]}}),
        _spec_dict(observation={"s": {"shape": []}}),
        _spec_dict(observation={"s": {}}),
        _spec_dict(observation={"s": 5}),
        _spec_dict(observation={"s": {"shape": None}}),
        _spec_dict(observation={"s": {"shape": ["x"]}}),
        _spec_dict(observation={"s": {"shape": [3], "quality": "high"}}),
        _spec_dict(action_dim=0),
        _spec_dict(action_dim="two"),
        {k: v for k, v in _spec_dict().items() if k != "action_dim"},
        _spec_dict(action_low=[0.0]),
        _spec_dict(action_low=5),
        _spec_dict(action_high=["a", "b"]),
    ],
)
def test_spec_from_dict_errors_are_schema_errors(d):
    with pytest.raises(SchemaError):
        EpisodeSpec.from_dict(d)


@pytest.mark.parametrize("over", [
    dict(observation={"s": {"shape": [float("inf")]}}),
    dict(action_dim=float("inf")),
    dict(observation={"s": {"shape": [3], "dtype": "uint8", "quality": float("inf")}}),
])
def test_spec_from_dict_infinite_numbers_are_schema_errors(over):
    with pytest.raises(SchemaError):
        EpisodeSpec.from_dict(_spec_dict(**over))


@pytest.mark.parametrize("over", [
    dict(observation={"s": {"shape": [2**40]}}),
    dict(action_dim=2**40),
    dict(observation={"s": {"shape": [2**40, 4, 3], "dtype": "uint8"}}),
])
def test_spec_with_huge_shape_is_refused_as_schema_error(over):
    with pytest.raises(SchemaError):
        EpisodeSpec.from_dict(_spec_dict(**over)).arrow_schema()


def test_field_spec_checks():
    with pytest.raises(SchemaError):
        FieldSpec((4, 4, 3), "uint8", codec="gif")
    assert FieldSpec((4, 4, 3), "uint8").arrow_type() == pa.binary(48)
    assert FieldSpec((4, 4, 3), "uint8", codec="jpeg").arrow_type() == pa.binary()
    assert FieldSpec((2, 5)).size == 10
    with pytest.raises(SchemaError):
        encode_image(np.zeros((4, 4, 3), np.uint8), FieldSpec((4, 4, 1), "uint8", codec="png"))


def test_decode_image_refuses_wrong_sizes_and_garbage():
    fs = FieldSpec((4, 4, 3), "uint8", codec="png")
    big = encode_image(np.zeros((8, 8, 3), np.uint8), FieldSpec((8, 8, 3), "uint8", codec="png"))
    with pytest.raises(SchemaError):
        decode_image(big, fs)
    with pytest.raises(SchemaError):
        decode_image(b"\x89PNG garbage", fs)
    with pytest.raises(SchemaError):
        decode_image(b"\x00" * 47, FieldSpec((4, 4, 3), "uint8"))


# -------------------------------------------------------------------- fuzz

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_SPEC = EpisodeSpec(
    {"joints": FieldSpec((3,)), "cam": FieldSpec((4, 4, 3), "uint8", codec="raw")}, action_dim=2
)
FUZZ_BATCH = build_batch(FUZZ_SPEC, "r", "e", make_steps(3, FUZZ_SPEC))
FUZZ_RAW = ipc_bytes(FUZZ_BATCH)
FUZZ_BODY = compress(FUZZ_RAW)


@st.composite
def mutate(draw, data: bytes):
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


def _decode_or_fleet_error(body: bytes) -> None:
    try:
        batch = decode_chunk(body, FUZZ_SPEC, max_decompressed=1 << 20, max_rows=100)
    except FleetError:
        return
    assert isinstance(batch, pa.RecordBatch)
    assert 1 <= batch.num_rows <= 100


@settings(FUZZ, max_examples=200)
@given(mutate(FUZZ_BODY))
def test_fuzz_mutated_chunk_body(body):
    _decode_or_fleet_error(body)


@settings(FUZZ, max_examples=400)
@given(mutate(FUZZ_RAW))
def test_fuzz_mutated_arrow_stream_recompressed(raw):
    """Mutate the Arrow IPC bytes under a valid zstd frame, so the Arrow reader itself is attacked."""
    _decode_or_fleet_error(compress(raw))
