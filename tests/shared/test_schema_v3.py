"""Schema version 3 (humans in the loop): the policy's proposal, human rewards and demo flags travel
with every row, and rows of older robots and older segments read as what they mean."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cloud.buffer.replay import ReplayBuffer
from cloud.export.episodes import BufferEpisodes
from shared.chunk import StepRecord, build_batch, decode_chunk, encode_chunk, upgrade
from shared.errors import SchemaError
from shared.schema import V3_COLUMNS, V4_COLUMNS, EpisodeSpec, FieldSpec

SPEC = EpisodeSpec({"o": FieldSpec((3,))}, 2, (-1.0, -1.0), (1.0, 1.0))
LIMITS = {"max_decompressed": 1 << 20, "max_rows": 100}


def steps(n: int, **kw) -> list[StepRecord]:
    rng = np.random.default_rng(0)
    return [StepRecord({"o": rng.normal(size=3)}, rng.uniform(-1, 1, 2), 1.0, {"o": rng.normal(size=3)},
                       False, i == n - 1, step=i, **kw) for i in range(n)]


def test_human_columns_round_trip():
    rec = steps(4, intervention=True, policy_action=np.array([0.5, -0.5]), human_reward=2.0, demo=True)
    batch = decode_chunk(encode_chunk(build_batch(SPEC, "r", "e", rec)), SPEC, **LIMITS)
    assert batch.column("intervention").to_pylist() == [True] * 4
    assert batch.column("demo").to_pylist() == [True] * 4
    assert batch.column("human_reward").to_pylist() == [2.0] * 4
    assert batch.column("policy_action").to_pylist() == [[0.5, -0.5]] * 4
    executed = np.asarray(batch.column("action").to_pylist(), np.float32)
    np.testing.assert_allclose(executed, np.asarray([s.action for s in rec], np.float32))


def test_policy_action_defaults_to_the_executed_action():
    rec = steps(3)
    batch = build_batch(SPEC, "r", "e", rec)
    assert batch.column("policy_action").to_pylist() == batch.column("action").to_pylist()


def test_a_v2_robot_is_decoded_in_its_layout_and_stored_in_this_one(tmp_path):
    old = EpisodeSpec.from_dict({**SPEC.to_dict(), "version": 2})
    assert old == SPEC and old.version == 2
    v2 = build_batch(SPEC, "old", "e", steps(5)).select([c for c in SPEC.arrow_schema().names if c not in V3_COLUMNS + V4_COLUMNS])
    assert v2.schema.equals(old.arrow_schema())
    buf = ReplayBuffer(tmp_path / "b", memory_capacity=100)
    buf.check_spec(old, "old")
    assert buf.spec is not None and buf.spec.version == 4  # the run is stored in this build's layout
    batch = decode_chunk(encode_chunk(v2), buf.wire_spec("old"), **LIMITS)
    assert batch.schema.equals(SPEC.arrow_schema())
    assert batch.column("policy_action").to_pylist() == batch.column("action").to_pylist()
    assert not any(batch.column("demo").to_pylist()) and batch.column("human_reward").to_pylist() == [0.0] * 5
    buf.write([("old", 1, batch)])
    assert buf.size == 5


def test_segments_written_before_version_3_still_load(tmp_path):
    root = tmp_path / "b"
    buf = ReplayBuffer(root, memory_capacity=100)
    buf.check_spec(SPEC, "r")
    buf.write([("r", 1, build_batch(SPEC, "r", "e", steps(6, intervention=True, human_reward=1.0)))])
    seg = buf.segment_paths()[0]
    t = pq.read_table(seg)
    pq.write_table(t.drop_columns(list(V3_COLUMNS + V4_COLUMNS)), seg)  # as an older fleetrl stored it
    again = ReplayBuffer(root, memory_capacity=100)
    assert again.size == 6
    batch = again.sample(16, np.random.default_rng(0))
    assert (batch["intervention"] == 1).all() and (batch["human_reward"] == 0).all() and (batch["demo"] == 0).all()
    table = again.read_segment(again.segments()[0])
    assert table.column("policy_action").to_pylist() == table.column("action").to_pylist()
    assert isinstance(table, pa.Table)


def test_a_v2_robot_with_another_spec_is_told_the_field_that_differs_not_the_layout(tmp_path):
    buf = ReplayBuffer(tmp_path / "b", memory_capacity=100)
    buf.check_spec(SPEC, "new")
    wide = {**SPEC.to_dict(), "version": 2, "action_high": [2.0, 2.0]}
    with pytest.raises(SchemaError, match=r"action_high: run has \[1.0, 1.0\], robot has \[2.0, 2.0\]"):
        buf.check_spec(EpisodeSpec.from_dict(wide), "old")


def test_a_run_with_segments_of_both_layouts_exports_its_episodes(tmp_path):
    root = tmp_path / "buffer"
    buf = ReplayBuffer(root, memory_capacity=100)
    buf.check_spec(SPEC, "r")
    buf.write([("r", 1, build_batch(SPEC, "r", "before", steps(4)))])
    seg = buf.segment_paths()[0]
    pq.write_table(pq.read_table(seg).drop_columns(list(V3_COLUMNS + V4_COLUMNS)), seg)  # stored by fleetrl before version 3
    buf.write([("r", 2, build_batch(SPEC, "r", "after", steps(3, demo=True)))])
    episodes = {e.episode_id: e.table for e in BufferEpisodes(tmp_path).episodes()}
    assert sorted(episodes) == ["after", "before"]
    assert episodes["before"].column("demo").to_pylist() == [False] * 4
    assert episodes["after"].column("demo").to_pylist() == [True] * 3


def test_rows_of_no_fleetrl_layout_are_refused_by_upgrade():
    with pytest.raises(SchemaError, match="lack the column"):
        upgrade(pa.table({"x": [1.0]}))


def test_v4_rows_keep_their_chunk_index_and_v3_rows_read_as_not_from_a_chunk(tmp_path):
    rec = steps(4)
    for i, s in enumerate(rec):
        s.chunk_index = [3, 4, -1, 0][i]
    batch = decode_chunk(encode_chunk(build_batch(SPEC, "r", "e", rec)), SPEC, **LIMITS)
    assert batch.column("chunk_index").to_pylist() == [3, 4, None, 0]
    old = EpisodeSpec.from_dict({**SPEC.to_dict(), "version": 3})
    v3 = build_batch(old, "old", "e", steps(3))
    assert "chunk_index" not in v3.schema.names
    up = decode_chunk(encode_chunk(v3), old, **LIMITS)
    assert up.schema.equals(SPEC.arrow_schema()) and up.column("chunk_index").to_pylist() == [None] * 3
    # A segment stored by a version 3 learner loads in this layout.
    root = tmp_path / "b"
    buf = ReplayBuffer(root, memory_capacity=100)
    buf.check_spec(SPEC, "r")
    buf.write([("r", 1, build_batch(SPEC, "r", "e", rec))])
    seg = buf.segment_paths()[0]
    pq.write_table(pq.read_table(seg).drop_columns(list(V4_COLUMNS)), seg)
    again = ReplayBuffer(root, memory_capacity=100)
    assert again.size == 4
    table = again.read_segment(again.segments()[0])
    assert table.column("chunk_index").to_pylist() == [None] * 4
