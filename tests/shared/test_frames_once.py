"""Frames stored once (schema v2): chunks carry a camera's next frame on their last row only,
and shared.frames rebuilds every row's next frame exactly, through the wire and through Parquet."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.chunk import StepRecord, build_batch, decode_chunk, encode_chunk
from shared.compression import compress
from shared.errors import SchemaError
from shared.frames import check_order, decode_frames, gather, next_frames, table_frames
from shared.image_codec import encode_image
from shared.schema import SCHEMA_VERSION, EpisodeSpec, FieldSpec

H, W = 10, 14
SPEC = EpisodeSpec(
    {
        "q": FieldSpec((3,)),
        "front": FieldSpec((H, W, 3), "uint8", codec="raw"),
        "wrist": FieldSpec((H, W, 1), "uint8", codec="png"),
    },
    action_dim=2,
)
STATE = EpisodeSpec({"q": FieldSpec((3,))}, action_dim=2)
LIMITS = dict(max_decompressed=16 << 20, max_rows=1000)


def ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return compress(sink.getvalue().to_pybytes())


def episode(rng: np.random.Generator, n: int, spec: EpisodeSpec = SPEC) -> list[StepRecord]:
    """n steps of one episode; o_0..o_n distinct random frames, step i sees o_i and o_{i+1}."""
    obs = [{k: (rng.integers(0, 256, fs.shape, dtype=np.uint8) if fs.is_image
                else rng.standard_normal(fs.shape).astype(np.float32)) for k, fs in spec.observation.items()}
           for _ in range(n + 1)]
    return [StepRecord(obs=obs[i], action=rng.uniform(-1, 1, 2).astype(np.float32), reward=float(i),
                       next_obs=obs[i + 1], terminated=i == n - 1, truncated=False, step=i) for i in range(n)]


def chunks(steps: list[StepRecord], size: int) -> list[list[StepRecord]]:
    return [steps[i : i + size] for i in range(0, len(steps), size)]


def wire(spec: EpisodeSpec, rid: str, eid: str, steps: list[StepRecord]) -> pa.RecordBatch:
    return decode_chunk(encode_chunk(build_batch(spec, rid, eid, steps)), spec, **LIMITS)


def stored_table(rng: np.random.Generator) -> tuple[pa.Table, list[StepRecord]]:
    """Two robots' episodes cut into chunks of 4 and interleaved chunk by chunk, as a segment holds them."""
    a, b, c = episode(rng, 9, SPEC), episode(rng, 3, SPEC), episode(rng, 6, SPEC)
    parts = [("arm-1", "A", ch) for ch in chunks(a, 4)] + [("arm-2", "B", ch) for ch in chunks(b, 4)]
    parts += [("arm-2", "C", ch) for ch in chunks(c, 4)]
    order = [parts[i] for i in (0, 3, 1, 4, 2, 5)]  # interleave robots; A's chunks stay in order, B ends, C starts
    batches = [wire(SPEC, rid, eid, ch) for rid, eid, ch in order]
    rows = [s for _, _, ch in order for s in ch]
    return pa.Table.from_batches(batches), rows


# ------------------------------------------------------------- round trips


@pytest.mark.parametrize("field", ["front", "wrist"])
def test_one_chunk_round_trip_is_exact(field):
    steps = episode(np.random.default_rng(1), 7)
    batch = wire(SPEC, "r", "e", steps)
    obs, nxt = table_frames(batch, field, SPEC.observation[field])
    np.testing.assert_array_equal(obs, np.stack([s.obs[field] for s in steps]))
    np.testing.assert_array_equal(nxt, np.stack([s.next_obs[field] for s in steps]))


@pytest.mark.parametrize("field", ["front", "wrist"])
def test_chunks_and_episodes_through_parquet_are_exact(tmp_path, field):
    table, rows = stored_table(np.random.default_rng(2))
    path = tmp_path / "seg.parquet"
    pq.write_table(table, path, row_group_size=8)
    back = pq.read_table(path)
    assert back.column("next_obs." + field).null_count == len(rows) - 6  # one frame per chunk
    obs, nxt = table_frames(back, field, SPEC.observation[field])
    np.testing.assert_array_equal(obs, np.stack([s.obs[field] for s in rows]))
    np.testing.assert_array_equal(nxt, np.stack([s.next_obs[field] for s in rows]))
    # an episode's last step keeps its own final frame, never the next episode's first
    ends = [i for i, s in enumerate(rows) if s.terminated]
    for i in ends[:-1]:
        assert not np.array_equal(nxt[i], obs[i + 1])


def test_raw_frames_without_nulls_are_a_zero_copy_view():
    batch = wire(SPEC, "r", "e", episode(np.random.default_rng(3), 5))
    col = batch.column("obs.front")
    frames, mask = decode_frames(col, SPEC.observation["front"])
    assert mask.all() and not frames.flags.writeable
    assert np.shares_memory(frames, np.frombuffer(col.buffers()[1], np.uint8))
    nxt, m = decode_frames(batch.column("next_obs.front"), SPEC.observation["front"])
    assert m.tolist() == [False] * 4 + [True] and not nxt[:4].any()  # null rows are zeros


def test_decode_frames_handles_slices_and_chunked_columns():
    table, rows = stored_table(np.random.default_rng(4))
    fs = SPEC.observation["front"]
    sliced = table.slice(5, 7).column("obs.front")
    frames, _ = decode_frames(sliced, fs)
    np.testing.assert_array_equal(frames, np.stack([s.obs["front"] for s in rows[5:12]]))
    assert table.column("next_obs.front").num_chunks > 1
    nxt, mask = decode_frames(table.column("next_obs.front"), fs)
    assert mask.sum() == 6
    want_last = np.stack([rows[i].next_obs["front"] for i in np.flatnonzero(mask)])
    np.testing.assert_array_equal(nxt[mask], want_last)
    for field in ("front", "wrist"):  # compact: the stored frames only, in row order
        packed, m = decode_frames(table.column("next_obs." + field), SPEC.observation[field], compact=True)
        assert packed.shape == (6, *SPEC.observation[field].shape) and (m == mask).all()
        np.testing.assert_array_equal(packed, np.stack([rows[i].next_obs[field] for i in np.flatnonzero(mask)]))


def test_next_frames_takes_per_row_frames_or_none():
    rng = np.random.default_rng(5)
    obs = rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    last = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mid = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = next_frames(obs, [None, mid, None, last])
    np.testing.assert_array_equal(out, np.stack([obs[1], mid, obs[3], last]))
    with pytest.raises(ValueError, match="does not end on a chunk's last row"):
        next_frames(obs, [None, mid, None, None])
    with pytest.raises(ValueError):
        next_frames(obs, [None, last])


def test_gather_matches_the_whole_table():
    table, _ = stored_table(np.random.default_rng(6))
    fs = SPEC.observation["front"]
    obs, _ = decode_frames(table.column("obs.front"), fs)
    stored, mask = decode_frames(table.column("next_obs.front"), fs)
    full = next_frames(obs, stored, mask)
    rows = np.random.default_rng(0).integers(0, len(obs), 50)
    o, n = gather(obs, stored, mask, rows)
    np.testing.assert_array_equal(o, obs[rows])
    np.testing.assert_array_equal(n, full[rows])
    cut = table.slice(0, 3)  # stops inside the first chunk
    o3, _ = decode_frames(cut.column("obs.front"), fs)
    s3, m3 = decode_frames(cut.column("next_obs.front"), fs)
    gather(o3, s3, m3, np.array([0, 1]))
    with pytest.raises(ValueError):
        gather(o3, s3, m3, np.array([2]))


def test_table_that_stops_inside_a_chunk_or_is_reordered_is_an_error():
    table, _ = stored_table(np.random.default_rng(7))
    fs = SPEC.observation["front"]
    with pytest.raises(ValueError, match="chunk's last row"):
        table_frames(table.slice(0, 3), "front", fs)
    reordered = table.take(pa.array([1, 0, 2, 3]))
    with pytest.raises(ValueError, match="stored order"):
        table_frames(reordered, "front", fs)
    with pytest.raises(ValueError):
        check_order(np.array([0, 1, 5, 6]), np.array([False, False, False, True]))
    check_order(np.array([0, 1, 5, 6]), np.array([False, True, False, True]))


# ------------------------------------------------------------- refusals


def _with_column(batch: pa.RecordBatch, name: str, col: pa.Array) -> pa.RecordBatch:
    cols = list(batch.columns)
    cols[batch.schema.get_field_index(name)] = col
    return pa.RecordBatch.from_arrays(cols, schema=batch.schema)


def test_chunk_with_every_next_frame_is_refused():
    steps = episode(np.random.default_rng(8), 4)
    batch = build_batch(SPEC, "r", "e", steps)
    fs = SPEC.observation["front"]
    full = pa.array([encode_image(s.next_obs["front"], fs) for s in steps], batch.schema.field("next_obs.front").type)
    err = pytest.raises(SchemaError, decode_chunk, ipc(_with_column(batch, "next_obs.front", full)), SPEC, **LIMITS)
    assert "next_obs.front" in err.value.message and "last row only" in err.value.message


def test_old_layout_chunk_is_refused_with_a_hint():
    steps = episode(np.random.default_rng(8), 3)
    batch = build_batch(SPEC, "r", "e", steps)
    fs = SPEC.observation["front"]
    i = batch.schema.get_field_index("next_obs.front")
    cols = list(batch.columns)
    cols[i] = pa.array([encode_image(s.next_obs["front"], fs) for s in steps], batch.schema.field(i).type)
    v1 = pa.RecordBatch.from_arrays(cols, schema=batch.schema.set(i, batch.schema.field(i).with_nullable(False)))
    err = pytest.raises(SchemaError, decode_chunk, ipc(v1), SPEC, **LIMITS).value
    assert "next_obs.front" in err.message and "older fleetrl" in err.message


def test_old_layout_raw_chunk_is_refused_with_a_hint():
    raw = EpisodeSpec({"cam": FieldSpec((4, 4, 3), "uint8", codec="raw")}, action_dim=2)
    steps = episode(np.random.default_rng(8), 3, raw)
    batch = build_batch(raw, "r", "e", steps)
    i = batch.schema.get_field_index("next_obs.cam")
    cols = list(batch.columns)
    cols[i] = pa.array([s.next_obs["cam"].tobytes() for s in steps], pa.binary(48))
    v1 = pa.RecordBatch.from_arrays(cols, schema=batch.schema.set(i, pa.field("next_obs.cam", pa.binary(48), False)))
    err = pytest.raises(SchemaError, decode_chunk, ipc(v1), raw, **LIMITS).value
    assert "next_obs.cam" in err.message and "older fleetrl" in err.message


def test_final_raw_frame_of_the_wrong_size_is_refused():
    raw = EpisodeSpec({"cam": FieldSpec((4, 4, 3), "uint8", codec="raw")}, action_dim=2)
    batch = build_batch(raw, "r", "e", episode(np.random.default_rng(8), 3, raw))
    short = pa.array([None, None, b"\x00" * 47], pa.binary())
    err = pytest.raises(SchemaError, decode_chunk, ipc(_with_column(batch, "next_obs.cam", short)), raw, **LIMITS).value
    assert "next_obs.cam" in err.message and "47 bytes" in err.message


def test_chunk_without_its_last_next_frame_is_refused():
    batch = build_batch(SPEC, "r", "e", episode(np.random.default_rng(9), 4))
    typ = batch.schema.field("next_obs.wrist").type
    none = pa.array([None] * 4, typ)
    err = pytest.raises(SchemaError, decode_chunk, ipc(_with_column(batch, "next_obs.wrist", none)), SPEC, **LIMITS)
    assert "next_obs.wrist" in err.value.message and "none on the last row" in err.value.message
    one = build_batch(SPEC, "r", "e", episode(np.random.default_rng(9), 1))
    with pytest.raises(SchemaError):
        decode_chunk(ipc(_with_column(one, "next_obs.wrist", pa.array([None], typ))), SPEC, **LIMITS)
    assert decode_chunk(ipc(one), SPEC, **LIMITS).num_rows == 1


def test_non_consecutive_steps_are_refused_with_cameras_only():
    steps = episode(np.random.default_rng(10), 4)
    steps[2].step = 7
    with pytest.raises(SchemaError, match="consecutive"):
        build_batch(SPEC, "r", "e", steps)
    batch = build_batch(SPEC, "r", "e", episode(np.random.default_rng(10), 4))
    skipped = _with_column(batch, "step", pa.array([0, 1, 3, 4], pa.int32()))
    err = pytest.raises(SchemaError, decode_chunk, ipc(skipped), SPEC, **LIMITS).value
    assert "consecutive" in err.message and "step 1 is followed by 3" in err.message
    state = episode(np.random.default_rng(10), 4, STATE)
    state[2].step = 7  # state-only chunks keep next_obs per row: no ordering requirement
    assert decode_chunk(encode_chunk(build_batch(STATE, "r", "e", state)), STATE, **LIMITS).num_rows == 4


def test_nulls_in_obs_frames_are_still_refused():
    batch = build_batch(SPEC, "r", "e", episode(np.random.default_rng(11), 3))
    typ = batch.schema.field("obs.front").type
    holed = pa.array([b"\0" * (H * W * 3), None, b"\0" * (H * W * 3)], typ)
    err = pytest.raises(SchemaError, decode_chunk, ipc(_with_column(batch, "obs.front", holed)), SPEC, **LIMITS)
    assert "non-nullable" in err.value.message


# ------------------------------------------------------------- spec versions


def test_spec_versions():
    assert SCHEMA_VERSION == 4 and SPEC.to_dict()["version"] == 4
    v1_state = {**STATE.to_dict(), "version": 1}
    assert EpisodeSpec.from_dict(v1_state) == STATE  # same layout without cameras
    err = pytest.raises(SchemaError, EpisodeSpec.from_dict, {**SPEC.to_dict(), "version": 1}).value
    assert "older fleetrl" in err.message and "front" in err.message
    for bad in (0, 5, True, "2", None):
        with pytest.raises(SchemaError):
            EpisodeSpec.from_dict({**STATE.to_dict(), "version": bad})


def test_a_v1_state_only_run_still_opens(tmp_path):
    from cloud.buffer.replay import ReplayBuffer

    root = tmp_path / "buffer"
    buf = ReplayBuffer(root, memory_capacity=100)
    buf.check_spec(STATE)
    buf.write([("r", 1, build_batch(STATE, "r", "e", episode(np.random.default_rng(12), 5, STATE)))])
    buf.store.compact()  # everything in the snapshot (the log of commits since it emptied) to edit it by hand
    manifest = json.loads((root / "manifest.json").read_bytes())
    manifest["spec"]["version"] = 1  # as an older fleetrl wrote it
    (root / "manifest.json").write_text(json.dumps(manifest))
    again = ReplayBuffer(root, memory_capacity=100)
    assert again.spec == STATE and again.size == 5
    manifest["spec"] = {**SPEC.to_dict(), "version": 1}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="older fleetrl"):
        ReplayBuffer(root, memory_capacity=100)


@pytest.mark.parametrize("column", ["obs.wrist", "next_obs.wrist"])
def test_a_png_frame_that_does_not_decode_is_refused_before_it_is_stored(column):
    """A corrupt PNG found only when the learner reads the stored segment could not be refused any more."""
    batch = build_batch(SPEC, "r", "e", episode(np.random.default_rng(12), 3))
    values = batch.column(column).to_pylist()
    i = next(k for k, v in enumerate(values) if v is not None)
    values[i] = b"\x89PNG garbage"
    bad = _with_column(batch, column, pa.array(values, batch.schema.field(column).type))
    err = pytest.raises(SchemaError, decode_chunk, ipc(bad), SPEC, **LIMITS).value
    assert column in err.message and "corrupt png" in err.message
