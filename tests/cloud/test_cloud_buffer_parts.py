"""The replay buffer's parts (ring storage, sampler, transform, writer), the SampleSource
protocol both buffers implement, and the learner app without a trainer. In-process, real files."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
from aiohttp import web

from cloud.app import CHECKPOINT, make_app, snapshot
from cloud.buffer import (Dims, NormaliseAction, ReplayBuffer, RingStorage, RingWriter, SampleSource, UniformSampler,
                          pack)
from cloud.cluster.learner import ShardedBuffer
from cloud.keys import INGEST, PUBLISHER, TRAINER
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerConfig
from shared.protocol import Lost
from shared.schema import EpisodeSpec, FieldSpec

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((2,))}, action_dim=2,
                   action_low=(0.0, -4.0), action_high=(10.0, 4.0))


def _batch(start: int, n: int, robot: str = "a") -> pa.RecordBatch:
    steps = [StepRecord({"pos": np.full(3, i, np.float32), "goal": np.full(2, -i, np.float32)},
                        np.array([i % 11, 0.0], np.float32), float(i),
                        {"pos": np.full(3, i + 0.5, np.float32), "goal": np.full(2, -i, np.float32)},
                        False, False, step=i) for i in range(start, start + n)]
    return build_batch(SPEC, robot, f"ep-{robot}", steps)


# ---------------------------------------------------------------- ring storage


def test_ring_write_index_wraps_and_a_write_straddles_the_end():
    ring = RingStorage(4, {"x": (2,), "y": ()})
    ring.extend({"x": np.arange(6, dtype=np.float32).reshape(3, 2), "y": np.array([0, 1, 2], np.float32)})
    assert (len(ring), ring.added) == (3, 3)
    ring.extend({"x": np.full((3, 2), 9, np.float32), "y": np.array([3, 4, 5], np.float32)})  # slots 3, 0, 1
    assert (ring.size, ring.added) == (4, 6)
    assert ring.data["y"].tolist() == [4, 5, 2, 3]
    assert ring.get(np.array([2, 0]))["y"].tolist() == [2, 4]
    ring.extend({"x": np.zeros((1, 2), np.float32), "y": np.array([6], np.float32)})  # continues at slot 2
    assert ring.data["y"].tolist() == [4, 5, 6, 3]


def test_ring_keeps_only_the_newest_rows_of_an_oversized_write():
    ring = RingStorage(3, {"y": ()})
    ring.extend({"y": np.arange(10, dtype=np.float32)})
    assert sorted(ring.data["y"].tolist()) == [7, 8, 9] and ring.added == 10
    ring.extend({"y": np.array([10], np.float32)})
    assert sorted(ring.data["y"].tolist()) == [8, 9, 10]


def test_ring_refuses_rows_with_other_columns_and_a_zero_capacity():
    ring = RingStorage(4, {"x": (2,), "y": ()})
    with pytest.raises(ValueError, match="columns"):
        ring.extend({"x": np.zeros((1, 2), np.float32)})
    assert ring.size == 0
    with pytest.raises(ValueError, match="capacity"):
        RingStorage(0, {"y": ()})


# ---------------------------------------------------------------- sampler


def test_uniform_sampler_is_seedable_and_stays_within_what_is_stored():
    s = UniformSampler()
    a = s.indices(7, 5000, np.random.default_rng(3))
    b = s.indices(7, 5000, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)  # same generator state, same rows: what a resumed trainer relies on
    assert a.min() == 0 and a.max() == 6
    counts = np.bincount(a, minlength=7)
    assert counts.min() > 5000 / 7 * 0.8  # uniform, roughly
    with pytest.raises(ValueError, match="empty"):
        s.indices(0, 4, np.random.default_rng(0))


def test_buffer_sample_draws_the_sampler_rows_from_memory_with_the_transform(tmp_path):
    buf = ReplayBuffer(tmp_path, 16)
    buf.check_spec(SPEC)
    buf.write([("a", 1, _batch(0, 10)), ("a", 2, _batch(10, 10))])  # wraps the 16-row ring
    got = buf.sample(32, np.random.default_rng(5))
    idx = UniformSampler().indices(16, 32, np.random.default_rng(5))
    rows = buf.memory.get(idx)
    for k in ("obs", "next_obs", "reward", "terminated"):
        np.testing.assert_array_equal(got[k], rows[k])
    np.testing.assert_allclose(got["action"], (rows["action"] - [5.0, 0.0]) / [5.0, 4.0], atol=1e-6)
    assert set(got["obs"][:, 0].tolist()) <= set(range(4, 20))  # only the 16 newest rows


# ---------------------------------------------------------------- transform, writer


def test_normalise_action_maps_bounds_to_unit_range():
    t = NormaliseAction(SPEC)
    out = t({"action": np.array([[0, -4], [10, 4], [5, 0], [2.5, 2]], np.float32)})
    np.testing.assert_allclose(out["action"], [[-1, -1], [1, 1], [0, 0], [-0.5, 0.5]], atol=1e-6)
    flat = EpisodeSpec(observation={"pos": FieldSpec((3,))}, action_dim=1, action_low=(2.0,), action_high=(2.0,))
    assert NormaliseAction(flat)({"action": np.array([[2.0]], np.float32)})["action"].tolist() == [[0.0]]  # not inf


def test_writer_flattens_state_fields_in_the_asked_order_and_pack_keeps_marks():
    w = RingWriter(SPEC, ["goal", "pos"])
    rows = w.rows(_batch(3, 2))
    assert w.obs_dim == 5 and rows["obs"].tolist()[0] == [-3, -3, 3, 3, 3]
    assert rows["action"].tolist() == [[3, 0], [4, 0]]  # as recorded: normalising is the transform's job
    packed = pack([("a", 4, _batch(0, 2)), ("a", 5, Lost(5, 6, "crc")), ("b", 1, _batch(0, 3, "b"))])
    assert packed.table is not None and packed.table.column("stream_seq").to_pylist() == [4, 4, 1, 1, 1]
    assert packed.robots == {"a": [4, 6, 2], "b": [1, 1, 3]}
    assert packed.lost == [{"robot_id": "a", "first": 5, "last": 6, "reason": "crc"}]
    assert pack([("a", 1, Lost(1, 2, "x"))]).table is None


# ---------------------------------------------------------------- SampleSource


def test_replay_buffer_is_a_sample_source(tmp_path):
    buf = ReplayBuffer(tmp_path, 100)
    assert isinstance(buf, SampleSource)
    assert (buf.dims, buf.size, buf.added, buf.rows, buf.segment_count) == (None, 0, 0, 0, 0)
    buf.check_spec(SPEC)
    buf.write([("a", 1, _batch(0, 6))])
    assert buf.dims == Dims(5, 2, ("pos", "goal"))
    assert (buf.size, buf.added, buf.rows, buf.segment_count) == (6, 6, 6, 1)
    assert buf.marks() == {"a": 1} and buf.hwm("a") == 1 and buf.robot_bytes("a") > 0
    buf.set_extra("sources", {"a": "sim"})
    again = ReplayBuffer(tmp_path, 100)  # the manifest behind the buffer: tags and marks survive a restart
    assert again.extra("sources") == {"a": "sim"} and again.extra("nothing") is None
    assert again.marks() == {"a": 1} and again.segment_count == 1 and again.size == 6


def test_sharded_buffer_is_a_sample_source_summing_its_shards():
    sb = ShardedBuffer(["s1", "s2"])
    assert isinstance(sb, SampleSource)
    assert (sb.dims, sb.size, sb.added) == (None, 0, 0)
    sb.update("s1", {"size": 0, "added": 0})  # a shard without a spec yet
    assert sb.dims is None and sb.size == 0
    report = {"obs_dim": 5, "act_dim": 2, "obs_fields": ["pos", "goal"]}
    sb.update("s1", {"size": 10, "added": 30, "rows": 30, "segments": 3, **report})
    sb.update("s2", {"size": 4, "added": 4, "rows": 4, "segments": 1, **report})
    assert sb.dims == Dims(5, 2, ("pos", "goal"))
    assert (sb.size, sb.added, sb.rows, sb.segment_count) == (14, 34, 34, 4)
    sb.update("s2", {"size": 99, "added": 99, "obs_dim": 7, "act_dim": 2, "obs_fields": ["x"]})  # another spec
    assert (sb.size, sb.dims) == (14, Dims(5, 2, ("pos", "goal")))  # ignored


# ---------------------------------------------------------------- make_app without a trainer


def _cfg(tmp_path) -> LearnerConfig:
    return LearnerConfig(data_dir=tmp_path / "run", server={"host": "127.0.0.1", "port": 0, "auth": "open"},
                         learner={"learning_starts": 1, "hidden": [16, 16], "batch_size": 8})


@pytest.mark.parametrize("with_trainer", [False, True])
async def test_make_app_starts_a_trainer_only_when_asked(tmp_path, with_trainer):
    before = {t.ident for t in threading.enumerate() if t.name == "trainer"}
    app = make_app(_cfg(tmp_path), with_trainer=with_trainer)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        trainers = [t for t in threading.enumerate() if t.name == "trainer" and t.ident not in before]
        assert (TRAINER in app) is with_trainer and len(trainers) == int(with_trainer)
        assert (app[INGEST].on_durable is not None) is with_trainer
        assert (tmp_path / "run" / CHECKPOINT).parent.is_dir() is with_trainer
        assert app[PUBLISHER].version == 0  # weights still relayed to robots either way
        st = snapshot(app)
        assert st["updates"] == 0 and st["trainer_error"] is None and st["buffer_rows"] == 0
    finally:
        await runner.cleanup()
    assert not any(t.is_alive() for t in trainers)


def test_sharded_buffer_dims_carry_the_cameras_shards_report():
    sb = ShardedBuffer(["s1", "s2"])
    report = {"obs_dim": 5, "act_dim": 2, "obs_fields": ["pos", "goal"], "images": [["front", [64, 64, 3]]]}
    sb.update("s1", {"size": 3, "added": 3, **report})
    assert sb.dims == Dims(5, 2, ("pos", "goal"), (("front", (64, 64, 3)),))
    assert sb.dims.image_fields == ("front",)
    sb.update("s2", {"size": 9, "added": 9, **report, "images": [["front", [32, 32, 3]]]})  # other frames
    assert sb.size == 3  # ignored: its batches could not be concatenated with the others'


def test_ring_columns_keep_their_dtypes():
    ring = RingStorage(4, {"x": (2,), "frame": ()}, {"frame": "int64"})
    ring.extend({"x": np.ones((3, 2), np.float32), "frame": np.array([2**40, 5, 7])})
    assert ring.data["frame"].dtype == np.int64 and ring.get(np.array([0]))["frame"].tolist() == [2**40]
    assert ring.chronological(np.arange(3)).tolist() == [0, 1, 2]
    ring.extend({"x": np.ones((2, 2), np.float32), "frame": np.array([8, 9])})  # wraps: oldest is slot 1
    assert ring.chronological(np.arange(4)).tolist() == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="dtypes"):
        RingStorage(4, {"x": ()}, {"y": "int64"})
