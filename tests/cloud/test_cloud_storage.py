"""Segment storage, the manifest, recovery, the replay buffer and the memory ring, on real files."""

from __future__ import annotations

import errno

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cloud.buffer.manifest as manifest_mod
import cloud.buffer.storage as storage_mod
from cloud.buffer import NormaliseAction, ReplayBuffer, RingStorage, RingWriter, SegmentStore
from shared.chunk import StepRecord, build_batch
from shared.errors import SchemaError, StorageError
from shared.schema import EpisodeSpec, FieldSpec

SPEC = EpisodeSpec(
    observation={"pos": FieldSpec((3,)), "goal": FieldSpec((2,))},
    action_dim=2,
    action_low=(0.0, -4.0),
    action_high=(10.0, 4.0),
)


def _steps(start: int, n: int, episode_end: bool = False, success: bool = False) -> list[StepRecord]:
    out = []
    for i in range(start, start + n):
        obs = {"pos": np.full(3, i, np.float32), "goal": np.full(2, -i, np.float32)}
        nxt = {"pos": np.full(3, i + 0.5, np.float32), "goal": np.full(2, -i, np.float32)}
        last = episode_end and i == start + n - 1
        out.append(StepRecord(obs, np.array([5.0, 0.0], np.float32), float(i), nxt, last, False, last and success, step=i))
    return out


def _batch(robot: str, start: int, n: int, **kw) -> pa.RecordBatch:
    return build_batch(SPEC, robot, f"ep-{robot}", _steps(start, n, **kw))


def _table(robot: str, seq: int, start: int, n: int, **kw) -> pa.Table:
    b = _batch(robot, start, n, **kw)
    return pa.Table.from_batches([b]).append_column("stream_seq", pa.array([seq] * n, pa.uint64()))


# ---------------------------------------------------------------- SegmentStore


def test_segment_written_atomically_and_readable(tmp_path):
    st = SegmentStore(tmp_path)
    t = _table("r1", 1, 0, 6)
    info = st.write_segment(t, {"r1": [1, 1, 6]})
    files = sorted(p.name for p in (tmp_path / "segments").iterdir())
    assert files == [info.name]  # no temp file left behind
    assert st.read_segment(info.name).equals(t)
    assert pq.read_metadata(tmp_path / "segments" / info.name).num_rows == 6
    m = storage_mod.read_manifest(tmp_path)  # the snapshot and the log line naming the segment
    assert m is not None and [s.name for s in m.segments] == [info.name]
    assert m.hwm == {"r1": 1}
    assert not (tmp_path / "manifest.json.tmp").exists()


def test_manifest_hwm_advances_per_robot_and_never_goes_back(tmp_path):
    st = SegmentStore(tmp_path)
    st.write_segment(pa.concat_tables([_table("a", 1, 0, 2), _table("a", 2, 2, 2), _table("b", 1, 0, 3)]),
                     {"a": [1, 2, 4], "b": [1, 1, 3]})
    assert st.manifest.hwm == {"a": 2, "b": 1}
    st.write_segment(_table("b", 2, 3, 1), {"b": [2, 2, 1]})
    assert st.manifest.hwm == {"a": 2, "b": 2}
    st.write_segment(_table("a", 1, 0, 1), {"a": [1, 1, 1]})  # an old mark never lowers it
    assert st.manifest.hwm["a"] == 2
    assert st.rows == 9


def test_reopen_recovers_rows_and_marks(tmp_path):
    st = SegmentStore(tmp_path)
    run_id = st.manifest.run_id
    st.write_segment(_table("a", 1, 0, 4), {"a": [1, 1, 4]})
    st.write_segment(_table("a", 2, 4, 5), {"a": [2, 2, 5]})
    st2 = SegmentStore(tmp_path)
    assert st2.manifest.run_id == run_id
    assert st2.rows == 9
    assert st2.manifest.hwm == {"a": 2}
    assert st2.recovery_report == {"segments": 2, "rows": 9, "stray_removed": []}
    info = st2.write_segment(_table("a", 3, 9, 1), {"a": [3, 3, 1]})
    assert info.name not in {s.name for s in st.manifest.segments}  # names never reused


def test_stray_segment_and_leftover_tmp_are_removed_and_reported(tmp_path):
    st = SegmentStore(tmp_path)
    st.write_segment(_table("a", 1, 0, 3), {"a": [1, 1, 3]})
    seg_dir = tmp_path / "segments"
    pq.write_table(_table("a", 2, 3, 3), seg_dir / "seg-00000002.parquet")  # renamed, never committed
    (seg_dir / "seg-00000003.parquet.tmp").write_bytes(b"PAR1 half written")
    st2 = SegmentStore(tmp_path)
    assert sorted(st2.recovery_report["stray_removed"]) == ["seg-00000002.parquet", "seg-00000003.parquet.tmp"]
    assert sorted(p.name for p in seg_dir.iterdir()) == ["seg-00000001.parquet"]
    assert st2.rows == 3 and st2.manifest.hwm == {"a": 1}


def test_failed_manifest_commit_leaves_a_stray_that_recovery_removes(tmp_path, monkeypatch):
    st = SegmentStore(tmp_path)
    st.write_segment(_table("a", 1, 0, 3), {"a": [1, 1, 3]})
    real = manifest_mod._write_all

    def full_disk(fd, data):
        real(fd, data[: len(data) // 2])  # half a line reaches the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest_mod, "_write_all", full_disk)
    with pytest.raises(OSError):
        st.write_segment(_table("a", 2, 3, 2), {"a": [2, 2, 2]})
    # in memory it is as if the write never happened
    assert st.manifest.hwm == {"a": 1} and st.rows == 3
    monkeypatch.setattr(manifest_mod, "_write_all", real)

    st2 = SegmentStore(tmp_path)
    assert st2.recovery_report["stray_removed"] == ["seg-00000002.parquet"]
    assert st2.rows == 3 and st2.manifest.hwm == {"a": 1}
    # and the robot's resend lands normally
    st2.write_segment(_table("a", 2, 3, 2), {"a": [2, 2, 2]})
    st3 = SegmentStore(tmp_path)
    assert st3.rows == 5 and st3.manifest.hwm == {"a": 2} and st3.recovery_report["stray_removed"] == []


def test_failed_commit_then_retry_in_the_same_process(tmp_path, monkeypatch):
    st = SegmentStore(tmp_path)
    real = manifest_mod._write_all
    calls = {"n": 0}

    def once(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "I/O error")
        return real(fd, data)

    monkeypatch.setattr(manifest_mod, "_write_all", once)
    with pytest.raises(OSError):
        st.write_segment(_table("a", 1, 0, 2), {"a": [1, 1, 2]})
    st.write_segment(_table("a", 1, 0, 2), {"a": [1, 1, 2]})
    st2 = SegmentStore(tmp_path)
    assert st2.rows == 2 and st2.manifest.hwm == {"a": 1}
    assert [s.name for s in st2.manifest.segments] == ["seg-00000001.parquet"]


def test_manifest_rows_disagreeing_with_a_segment_is_an_error(tmp_path):
    st = SegmentStore(tmp_path)
    info = st.write_segment(_table("a", 1, 0, 3), {"a": [1, 1, 3]})
    pq.write_table(_table("a", 1, 0, 2), tmp_path / "segments" / info.name)
    with pytest.raises(StorageError, match="has 2 rows"):
        SegmentStore(tmp_path)


# ---------------------------------------------------------------- ReplayBuffer


def test_check_spec_adopts_first_and_refuses_another(tmp_path):
    buf = ReplayBuffer(tmp_path, 100)
    assert buf.spec is None
    buf.check_spec(SPEC)
    assert buf.spec == SPEC and buf.memory is not None
    buf.check_spec(EpisodeSpec.from_dict(SPEC.to_dict()))  # equal: fine
    other = EpisodeSpec(observation={"pos": FieldSpec((4,))}, action_dim=2)
    with pytest.raises(SchemaError) as ei:
        buf.check_spec(other)
    assert ei.value.code == "spec_mismatch"
    bounds = EpisodeSpec(observation=dict(SPEC.observation), action_dim=2, action_low=(0.0, -4.0), action_high=(10.0, 5.0))
    with pytest.raises(SchemaError) as ei:
        buf.check_spec(bounds)
    assert ei.value.code == "spec_mismatch"
    # the adopted spec survives a restart
    buf2 = ReplayBuffer(tmp_path, 100)
    assert buf2.spec == SPEC
    with pytest.raises(SchemaError) as ei:
        buf2.check_spec(other)
    assert ei.value.code == "spec_mismatch"


def test_observation_fields_must_exist(tmp_path):
    buf = ReplayBuffer(tmp_path, 10, obs_fields=["pos", "velocity"])
    with pytest.raises(SchemaError):
        buf.check_spec(SPEC)


def _write(buf: ReplayBuffer, robot: str, seq: int, start: int, n: int, **kw) -> None:
    buf.write([(robot, seq, _batch(robot, start, n, **kw))])


def test_reload_after_reopen_puts_rows_back_in_memory(tmp_path):
    buf = ReplayBuffer(tmp_path, 1000)
    buf.check_spec(SPEC)
    _write(buf, "a", 1, 0, 5, episode_end=True, success=True)
    _write(buf, "b", 1, 100, 4)
    buf.write([("a", 2, _batch("a", 5, 3)), ("b", 2, _batch("b", 104, 2, episode_end=True))])
    assert buf.rows == 14 and buf.size == 14
    assert buf.rows_by_robot == {"a": 8, "b": 6}
    assert buf.episodes_total == 2

    buf2 = ReplayBuffer(tmp_path, 1000)
    assert buf2.spec == SPEC
    assert buf2.rows == 14 and buf2.size == 14 and buf2.added == 14
    assert buf2.rows_by_robot == {"a": 8, "b": 6}
    assert buf2.hwm("a") == 2 and buf2.hwm("b") == 2 and buf2.hwm("c") == 0
    assert buf2.episodes_total == 2 and buf2.success_rate() == 0.5
    np.testing.assert_array_equal(buf2.memory.data["obs"][:14], buf.memory.data["obs"][:14])
    np.testing.assert_array_equal(buf2.memory.data["reward"][:14], buf.memory.data["reward"][:14])
    got = sorted(buf2.memory.data["obs"][:14, 0].tolist())
    assert got == sorted(list(range(0, 8)) + list(range(100, 106)))


def test_reload_keeps_only_the_newest_rows_when_memory_is_small(tmp_path):
    buf = ReplayBuffer(tmp_path, 10)
    buf.check_spec(SPEC)
    for k in range(3):
        _write(buf, "a", k + 1, 8 * k, 8)
    assert buf.size == 10
    assert sorted(buf.memory.data["obs"][:, 0].tolist()) == list(range(14, 24))
    buf2 = ReplayBuffer(tmp_path, 10)
    assert buf2.size == 10
    assert sorted(buf2.memory.data["obs"][:, 0].tolist()) == list(range(14, 24))
    assert buf2.rows == 24 and buf2.rows_by_robot == {"a": 24}


def test_stored_rows_carry_their_stream_seq(tmp_path):
    buf = ReplayBuffer(tmp_path, 100)
    buf.check_spec(SPEC)
    buf.write([("a", 7, _batch("a", 0, 2)), ("a", 8, _batch("a", 2, 3))])
    (seg,) = buf.segments()
    t = buf.read_segment(seg)
    assert t.column("stream_seq").to_pylist() == [7, 7, 8, 8, 8]
    assert seg.robots == {"a": [7, 8, 5]}


# ---------------------------------------------------------------- memory ring, writer, transform


def _ring(fields: list[str], capacity: int, spec: EpisodeSpec = SPEC) -> tuple[RingStorage, RingWriter]:
    w = RingWriter(spec, fields)
    return RingStorage(capacity, w.columns()), w


def test_memory_ring_overwrites_oldest(tmp_path):
    mem, w = _ring(["pos", "goal"], capacity=5)
    w.write(mem, _batch("a", 0, 3))
    assert (mem.size, mem.added) == (3, 3)
    w.write(mem, _batch("a", 3, 4))
    assert (mem.size, mem.added) == (5, 7)
    d = mem.data
    assert sorted(d["obs"][:, 0].tolist()) == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(d["obs"][:, 3], -d["obs"][:, 0])  # goal follows pos
    np.testing.assert_array_equal(d["next_obs"][:, 0], d["obs"][:, 0] + 0.5)
    np.testing.assert_array_equal(d["reward"], d["obs"][:, 0])  # rows stay aligned across columns
    w.write(mem, _batch("a", 100, 12))  # more than the capacity: only the newest fit
    assert (mem.size, mem.added) == (5, 19)
    assert sorted(d["obs"][:, 0].tolist()) == [107, 108, 109, 110, 111]
    np.testing.assert_array_equal(d["reward"], d["obs"][:, 0])


def test_buffer_sample_shapes_and_only_filled_rows(tmp_path):
    buf = ReplayBuffer(tmp_path, 100)
    buf.check_spec(SPEC)
    _write(buf, "a", 1, 1, 3, episode_end=True)
    b = buf.sample(256, np.random.default_rng(0))
    assert b["obs"].shape == (256, 5) and b["next_obs"].shape == (256, 5)
    assert b["action"].shape == (256, 2)
    assert b["reward"].shape == (256,) and b["terminated"].shape == (256,)
    assert all(x.dtype == np.float32 for x in b.values())
    assert set(b["obs"][:, 0].tolist()) <= {1.0, 2.0, 3.0}  # never an unfilled zero row
    assert set(b["terminated"].tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(b["terminated"], (b["obs"][:, 0] == 3).astype(np.float32))


def test_memory_obs_fields_subset_and_order():
    mem, w = _ring(["goal"], capacity=4)
    assert w.obs_dim == 2
    w.write(mem, _batch("a", 3, 1))
    np.testing.assert_array_equal(mem.data["obs"][0], [-3, -3])


def test_actions_are_normalised_to_unit_range_on_sample(tmp_path):
    buf = ReplayBuffer(tmp_path, 8)
    buf.check_spec(SPEC)
    steps = _steps(0, 3)
    for s, a in zip(steps, ([0.0, -4.0], [10.0, 4.0], [5.0, 0.0])):
        s.action = np.array(a, np.float32)
    buf.write([("a", 1, build_batch(SPEC, "a", "e", steps))])
    np.testing.assert_allclose(buf.memory.data["action"][:3], [[0, -4], [10, 4], [5, 0]])  # stored as recorded
    b = buf.sample(64, np.random.default_rng(0))
    by_row = {int(o): a.tolist() for o, a in zip(b["obs"][:, 0], b["action"])}
    np.testing.assert_allclose([by_row[0], by_row[1], by_row[2]], [[-1, -1], [1, 1], [0, 0]], atol=1e-6)


def test_actions_without_bounds_are_kept_as_is():
    spec = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((2,))}, action_dim=2)
    got = NormaliseAction(spec)({"action": np.array([[0.25, -0.5]], np.float32)})
    np.testing.assert_allclose(got["action"][0], [0.25, -0.5])
