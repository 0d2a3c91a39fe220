"""Cache-aware image replay: camera frames in a byte-budgeted memory ring, history from the
Parquet segments, and the prefetcher. Real chunks (shared.chunk), real Parquet, real torch.

Every frame encodes (robot, episode, step) and the state field ``pos`` holds the same
numbers, so each sampled row says which frames it must carry: its obs frame is
(r, e, s) and its next frame (r, e, s + 1), also on an episode's last step, where
the next frame is the episode's final frame (stored only on that chunk's last row).
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cloud.buffer import IMAGES, NEXT_IMAGES, Dims, Prefetcher, ReplayBuffer, UniformSampler
from cloud.buffer.storage import IMAGE_ROW_GROUP_ROWS, SEGMENTS
from shared.chunk import StepRecord, build_batch, decode_chunk, make_chunk
from shared.errors import SchemaError
from shared.schema import EpisodeSpec, FieldSpec

CAM, WRIST = (6, 8, 3), (4, 5, 3)
SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "cam": FieldSpec(CAM, "uint8"),
                                "wrist": FieldSpec(WRIST, "uint8", codec="png")},
                   action_dim=2, action_low=(-2.0, -2.0), action_high=(2.0, 2.0))
SPEC_RAW = EpisodeSpec(observation={**SPEC.observation, "wrist": FieldSpec(WRIST, "uint8")},
                       action_dim=2, action_low=(-2.0, -2.0), action_high=(2.0, 2.0))  # both cameras raw
BYTES_PER_STEP = int(np.prod(CAM) + np.prod(WRIST))  # one frame of each camera


def frame(shape: tuple[int, ...], r: int, e: int, s: int, salt: int = 0) -> np.ndarray:
    f = np.empty(shape, np.uint8)
    f[..., 0], f[..., 1], f[..., 2] = r, e, s
    f[0, 0] = (r * 31 + e * 7 + s * 3 + salt) % 256  # a pixel that also differs per camera
    f[-1, -1] = salt
    return f


def obs(r: int, e: int, s: int) -> dict[str, np.ndarray]:
    return {"pos": np.array([r, e, s], np.float32), "cam": frame(CAM, r, e, s, 1), "wrist": frame(WRIST, r, e, s, 2)}


def episode_chunks(r: int, e: int, length: int, chunk: int) -> list[list[StepRecord]]:
    """One episode of ``length`` steps cut into chunks of ``chunk`` (the last one shorter, ending the episode)."""
    steps = [StepRecord(obs(r, e, s), np.array([s % 3 - 1, r], np.float32), float(s), obs(r, e, s + 1),
                        terminated=s == length - 1, truncated=False, step=s) for s in range(length)]
    return [steps[i : i + chunk] for i in range(0, length, chunk)]


class Fleet:
    """Robots recording episodes, their chunks written through ReplayBuffer.write as ingest does."""

    def __init__(self, robots: int = 2, chunk: int = 5, spec: EpisodeSpec = SPEC):
        self.chunk, self.spec = chunk, spec
        self.seq = {f"r{i}": 0 for i in range(robots)}
        self.episodes = {f"r{i}": 0 for i in range(robots)}
        self.rows: list[tuple[int, int, int]] = []  # (robot, episode, step) in stored order

    def segment(self, buf: ReplayBuffer, lengths: list[int], wire: bool = False) -> None:
        """One sealed segment: each robot records one episode per length, chunks interleaved across robots."""
        items, per_robot = [], {}
        for rid in self.seq:
            r = int(rid[1:])
            chunks = []
            for length in lengths:
                chunks += [(self.episodes[rid], c) for c in episode_chunks(r, self.episodes[rid], length, self.chunk)]
                self.episodes[rid] += 1
            per_robot[rid] = chunks
        while any(per_robot.values()):
            for rid, chunks in per_robot.items():
                if not chunks:
                    continue
                e, steps = chunks.pop(0)
                self.seq[rid] += 1
                if wire:  # through the wire encoding and the ingest's decoder
                    enc = make_chunk(self.spec, rid, f"{rid}-e{e}", steps)
                    batch = decode_chunk(enc.body, self.spec, max_decompressed=1 << 24, max_rows=1000)
                else:
                    batch = build_batch(self.spec, rid, f"{rid}-e{e}", steps)
                items.append((rid, self.seq[rid], batch))
                self.rows += [(int(rid[1:]), e, s.step) for s in steps]
        buf.write(items)


def check_frames(batch: dict[str, np.ndarray]) -> list[tuple[int, int, int]]:
    """Every row's frames are the recorded ones; returns the rows' (robot, episode, step)."""
    keys = [(int(r), int(e), int(s)) for r, e, s in batch["obs"]]
    np.testing.assert_array_equal(batch["next_obs"][:, 2], batch["obs"][:, 2] + 1)
    for name, shape, salt in (("cam", CAM, 1), ("wrist", WRIST, 2)):
        got, nxt = batch[IMAGES + name], batch[NEXT_IMAGES + name]
        assert got.dtype == np.uint8 and got.shape == (len(keys), *shape) and nxt.shape == got.shape
        want = np.stack([frame(shape, r, e, s, salt) for r, e, s in keys])
        want_next = np.stack([frame(shape, r, e, s + 1, salt) for r, e, s in keys])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(nxt, want_next)
    return keys


def image_buffer(tmp_path, frames: int = 10_000, capacity: int = 10_000, history: float = 0.0,
                 spec: EpisodeSpec = SPEC, **kw) -> ReplayBuffer:
    buf = ReplayBuffer(tmp_path, capacity, ["pos"], image_fields=["cam", "wrist"],
                       image_memory_bytes=frames * BYTES_PER_STEP, history_fraction=history, **kw)
    buf.check_spec(spec)
    return buf


# ---------------------------------------------------------------- memory


def test_memory_serves_every_row_with_its_recorded_frames_across_chunk_and_episode_ends(tmp_path):
    buf = image_buffer(tmp_path)
    fleet = Fleet()
    fleet.segment(buf, [7, 5, 12], wire=True)  # chunk ends inside episodes, at episode ends, of 1..5 rows
    fleet.segment(buf, [3, 9])
    assert buf.size == len(fleet.rows) == buf.rows
    assert buf.dims == Dims(3, 2, ("pos",), (("cam", CAM), ("wrist", WRIST)))
    batch = buf.sample(3000, np.random.default_rng(0))
    assert set(check_frames(batch)) == set(fleet.rows)  # every stored row drawn, each with exact frames
    finals = [i for i, row in enumerate(batch["obs"]) if batch["terminated"][i]]
    assert finals and all(batch["obs"][i, 2] + 1 in (7, 5, 12, 3, 9) for i in finals)  # the final frames checked
    np.testing.assert_allclose(batch["action"][:, 1], batch["obs"][:, 0] / 2.0)  # normalised with its row


def test_frames_are_stored_once_per_step_in_memory(tmp_path):
    buf = image_buffer(tmp_path)
    fleet = Fleet(robots=1, chunk=4)
    fleet.segment(buf, [10])  # chunks of 4, 4, 2 rows: 10 obs frames + 3 chunk-final frames
    assert buf.frames is not None and buf.frames.total == 13


def test_byte_budget_evicts_frames_and_rows_without_them_are_never_served(tmp_path):
    buf = image_buffer(tmp_path, frames=40, capacity=1000)
    fleet = Fleet(chunk=5)
    for _ in range(4):
        fleet.segment(buf, [8, 6])
    assert buf.memory is not None and buf.memory.size == len(fleet.rows)  # the row ring holds all rows...
    assert 0 < buf.size < 40 and buf.size < len(fleet.rows)  # ...but only the newest rows' frames fit
    newest = set(fleet.rows[-buf.size :])
    for seed in range(3):
        assert set(check_frames(buf.sample(500, np.random.default_rng(seed)))) == newest


def test_an_oversized_write_keeps_the_newest_frames(tmp_path):
    buf = image_buffer(tmp_path, frames=12, capacity=1000)
    fleet = Fleet(robots=1, chunk=50)
    fleet.segment(buf, [30])  # one chunk of 30 rows, 31 frames, into a ring of 12
    assert buf.size == 11
    assert set(check_frames(buf.sample(300, np.random.default_rng(1)))) == set(fleet.rows[-11:])


# ---------------------------------------------------------------- history


@pytest.mark.parametrize("spec", [SPEC, SPEC_RAW], ids=["png-wrist-decoded", "raw-frames-read-in-place"])
def test_history_serves_rows_memory_lost_with_exact_frames_across_segments(tmp_path, spec):
    buf = image_buffer(tmp_path, frames=30, capacity=1000, history=0.5, history_cache_bytes=1 << 20, spec=spec)
    fleet = Fleet(chunk=5, spec=spec)
    for lengths in ([7, 5], [12], [3, 9, 6], [11]):
        fleet.segment(buf, lengths)
    recent = buf._recent
    assert buf.size == len(fleet.rows)  # memory's rows and history's: every stored row is drawable
    old, new = set(fleet.rows[:-recent]), set(fleet.rows[-recent:])
    seen: set[tuple[int, int, int]] = set()
    for seed in range(20):
        keys = check_frames(buf.sample(256, np.random.default_rng(seed)))
        assert set(keys[:128]) <= new and set(keys[128:]) <= old  # half recent, half history
        seen |= set(keys)
    assert seen == set(fleet.rows)  # every row, at every chunk, episode and segment boundary
    assert buf.history is not None and buf.history.loads >= 1
    mapped = {g.mapped for g in buf.history._cache.values()}
    assert mapped == {spec is SPEC_RAW}  # raw frames straight from the file; PNG through Arrow and the codec


def test_history_rows_are_drawn_uniformly(tmp_path):
    buf = image_buffer(tmp_path, frames=12, capacity=1000, history=1.0)
    fleet = Fleet(robots=1, chunk=5)
    for _ in range(3):
        fleet.segment(buf, [20, 4])
    limit = len(fleet.rows) - buf._recent
    keys = check_frames(buf.sample(20_000, np.random.default_rng(2)))
    counts = np.bincount([fleet.rows.index(k) for k in keys], minlength=limit)
    assert len(counts) == limit and counts.min() > 20_000 / limit * 0.7 and counts.max() < 20_000 / limit * 1.3


def test_image_segments_have_uncompressed_frames_in_row_groups_of_whole_chunks(tmp_path):
    buf = image_buffer(tmp_path)
    fleet = Fleet(robots=3, chunk=20)
    fleet.segment(buf, [45, 30])
    path = tmp_path / SEGMENTS / buf.segments()[0].name
    pf = pq.ParquetFile(path)
    table = pf.read(columns=["robot_id", "stream_seq"])
    ends, at = [], 0
    for i in range(pf.metadata.num_row_groups):
        rg = pf.metadata.row_group(i)
        at += rg.num_rows
        ends.append(at)
        assert rg.num_rows <= max(IMAGE_ROW_GROUP_ROWS, 20)
        for j in range(rg.num_columns):
            col = rg.column(j)
            camera = col.path_in_schema.endswith((".cam", ".wrist"))
            assert col.compression == ("UNCOMPRESSED" if camera else "ZSTD"), col.path_in_schema
    key = list(zip(table.column("robot_id").to_pylist(), table.column("stream_seq").to_pylist()))
    assert pf.metadata.num_row_groups > 1
    assert all(e == len(key) or key[e - 1] != key[e] for e in ends)  # each group ends on a chunk's last row


def test_state_only_segments_are_written_as_before(tmp_path):
    spec = EpisodeSpec(observation={"pos": FieldSpec((3,))}, action_dim=2)
    buf = ReplayBuffer(tmp_path, 100)
    buf.check_spec(spec)
    steps = [StepRecord({"pos": np.full(3, s, np.float32)}, np.zeros(2, np.float32), 0.0,
                        {"pos": np.full(3, s + 1, np.float32)}, False, False, step=s) for s in range(10)]
    buf.write([("a", i + 1, build_batch(spec, "a", "e", steps)) for i in range(12)])  # 12 chunks, 120 rows
    md = pq.read_metadata(tmp_path / SEGMENTS / buf.segments()[0].name)
    assert md.num_row_groups == 1 and md.row_group(0).column(0).compression == "ZSTD"


# ---------------------------------------------------------------- recovery


@pytest.mark.parametrize("spec", [SPEC, SPEC_RAW], ids=["png-wrist-decoded", "raw-frames-read-in-place"])
def test_recovery_refills_the_frame_ring_and_history(tmp_path, spec):
    buf = image_buffer(tmp_path, frames=30, capacity=1000, history=0.5, spec=spec)
    fleet = Fleet(chunk=5, spec=spec)
    for lengths in ([7, 5], [12], [3, 9]):
        fleet.segment(buf, lengths)
    recent, size = buf._recent, buf.size
    del buf
    again = image_buffer(tmp_path, frames=30, capacity=1000, history=0.5, spec=spec)
    assert (again._recent, again.size, again.rows) == (recent, size, len(fleet.rows))
    seen: set[tuple[int, int, int]] = set()
    for seed in range(10):
        keys = check_frames(again.sample(128, np.random.default_rng(seed)))
        assert set(keys[:64]) <= set(fleet.rows[-recent:])
        seen |= set(keys)
    assert seen == set(fleet.rows)
    fleet.segment(again, [4])  # and it goes on from there
    seen = set()
    for seed in range(10):
        seen |= set(check_frames(again.sample(256, np.random.default_rng(seed))))
    assert seen == set(fleet.rows)


# ---------------------------------------------------------------- spec checks, state only


def test_unknown_or_state_image_fields_are_refused_by_name(tmp_path):
    for bad in ("front", "pos"):
        buf = ReplayBuffer(tmp_path / bad, 10, image_fields=["cam", bad])
        with pytest.raises(SchemaError, match=bad):
            buf.check_spec(SPEC)
    with pytest.raises(ValueError, match="history_fraction"):
        ReplayBuffer(tmp_path / "h", 10, history_fraction=1.5)


def test_a_budget_below_two_frames_is_refused_and_the_spec_not_adopted(tmp_path):
    buf = ReplayBuffer(tmp_path, 10, image_fields=["cam"], image_memory_bytes=int(np.prod(CAM)))
    with pytest.raises(SchemaError, match="image_memory_mb"):
        buf.check_spec(SPEC)
    assert buf.spec is None and buf.dims is None and buf.store.manifest.spec is None


def test_state_only_sampling_is_unchanged_on_a_camera_spec(tmp_path):
    buf = ReplayBuffer(tmp_path, 16, ["pos"])
    buf.check_spec(SPEC)
    Fleet(chunk=5).segment(buf, [7, 5])  # 24 rows into a ring of 16
    assert buf.dims == Dims(3, 2, ("pos",)) and buf.frames is None and buf.history is None
    got = buf.sample(64, np.random.default_rng(5))
    assert sorted(got) == ["action", "demo", "human_reward", "intervention", "next_obs", "obs", "reward", "terminated"]
    assert buf.memory is not None
    want = buf.memory.get(UniformSampler().indices(16, 64, np.random.default_rng(5)))
    for k in ("obs", "next_obs", "reward", "terminated"):
        np.testing.assert_array_equal(got[k], want[k])


# ---------------------------------------------------------------- prefetcher


def _batches(pf: Prefetcher, n: int) -> list[dict[str, torch.Tensor]]:
    return [pf.get() for _ in range(n)]


def test_prefetcher_delivers_the_inline_batches_and_its_rng_state_resumes_them(tmp_path):
    buf = image_buffer(tmp_path, frames=30, capacity=1000, history=0.5)
    fleet = Fleet(chunk=5)
    for lengths in ([7, 5], [12], [9]):
        fleet.segment(buf, lengths)
    inline = Prefetcher(buf, 32, np.random.default_rng(7), depth=0)
    want = _batches(inline, 5)
    ahead = Prefetcher(buf, 32, np.random.default_rng(7), depth=3, pin_memory=True)
    got = _batches(ahead, 3)
    state = ahead.rng_state()
    ahead.close()  # batches it drew ahead are dropped; the state counts only those handed out
    rng = np.random.default_rng(0)
    rng.bit_generator.state = state
    resumed = Prefetcher(buf, 32, rng, depth=2)
    got += _batches(resumed, 2)
    assert resumed.rng_state() == inline.rng_state()  # both after the same five batches
    resumed.close()
    assert len(got) == len(want) == 5
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and g[IMAGES + "cam"].dtype == torch.uint8
        for k in w:
            assert torch.equal(g[k], w[k]), k
        check_frames({k: v.numpy() for k, v in g.items()})


def test_prefetcher_raises_the_sampling_error_in_get_and_refuses_an_empty_source(tmp_path):
    class Failing:
        size = added = rows = 1
        segment_count = 0
        dims = None

        def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
            raise OSError("segment vanished")

    for depth in (0, 2):
        pf = Prefetcher(Failing(), 4, np.random.default_rng(0), depth=depth)
        with pytest.raises(OSError, match="vanished"):
            pf.get()
        with pytest.raises(OSError, match="vanished"):
            pf.get()  # stays failed
        pf.close()
    empty = ReplayBuffer(tmp_path, 10)
    with pytest.raises(ValueError, match="before the source has rows"):
        Prefetcher(empty, 4, np.random.default_rng(0))


def test_prefetcher_close_stops_a_thread_blocked_on_a_full_queue(tmp_path):
    buf = image_buffer(tmp_path)
    Fleet(chunk=5).segment(buf, [6])
    pf = Prefetcher(buf, 8, np.random.default_rng(0), depth=1)
    pf.get()
    thread = pf._thread
    assert thread is not None
    pf.close()
    assert not thread.is_alive() and threading.active_count() >= 1
    with pytest.raises(RuntimeError, match="closed"):
        pf.get()


def test_sampling_while_writing_never_pairs_rows_with_overwritten_frames(tmp_path):
    buf = image_buffer(tmp_path, frames=25, capacity=60, history=0.3)
    fleet = Fleet(chunk=4)
    fleet.segment(buf, [6])
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(25):
                fleet.segment(buf, [5 + i % 4, 3])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=write)
    t.start()
    rng = np.random.default_rng(0)
    draws = 0
    while t.is_alive() or draws < 5:
        check_frames(buf.sample(64, rng))
        draws += 1
    t.join()
    assert not errors and draws >= 5


@pytest.mark.parametrize("spec", [SPEC, SPEC_RAW], ids=["png-wrist-decoded", "raw-frames-read-in-place"])
def test_history_draws_do_not_depend_on_read_threads_and_the_lru_keeps_its_byte_bound(tmp_path, spec):
    fleet = Fleet(chunk=5, spec=spec)
    buf = image_buffer(tmp_path, frames=12, capacity=1000, history=1.0, history_cache_bytes=1 << 30, spec=spec)
    for lengths in ([7, 5], [12], [3, 9, 6]):
        fleet.segment(buf, lengths)
    small = image_buffer(tmp_path, frames=12, capacity=1000, history=1.0, history_cache_bytes=2000, spec=spec)
    assert buf.history is not None and small.history is not None
    small.history.parallel_reads = False
    groups = len(buf.history.groups)
    for seed in range(30):
        a, b = buf.sample(64, np.random.default_rng(seed)), small.sample(64, np.random.default_rng(seed))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        assert small.history._cached <= 2000 or len(small.history._cache) == 1
    assert buf.history.loads <= groups  # a history that fits the cache is read once
    assert small.history.loads > groups  # a small one reads groups again


def test_a_camera_only_spec_samples_frames_with_an_empty_state(tmp_path):
    spec = EpisodeSpec(observation={"cam": FieldSpec(CAM, "uint8")}, action_dim=1)
    buf = ReplayBuffer(tmp_path, 100, image_fields=["cam"], image_memory_bytes=1 << 20)
    buf.check_spec(spec)
    steps = [StepRecord({"cam": frame(CAM, 0, 0, s, 1)}, np.zeros(1, np.float32), 0.0, {"cam": frame(CAM, 0, 0, s + 1, 1)},
                        s == 5, False, step=s) for s in range(6)]
    buf.write([("a", 1, build_batch(spec, "a", "e", steps))])
    assert buf.dims == Dims(0, 1, (), (("cam", CAM),))
    batch = buf.sample(40, np.random.default_rng(0))
    assert batch["obs"].shape == (40, 0)
    steps_seen = batch[IMAGES + "cam"][:, 0, 1, 2]  # the step a frame encodes
    np.testing.assert_array_equal(batch[NEXT_IMAGES + "cam"][:, 0, 1, 2], steps_seen + 1)


def test_segments_written_the_old_way_are_still_served_exactly(tmp_path, monkeypatch):
    """One zstd row group per segment (as before image row groups): history decodes them with Arrow."""
    import cloud.buffer.storage as storage_mod

    monkeypatch.setattr(storage_mod.SegmentStore, "_write_parquet",
                        lambda self, table, path: pq.write_table(table, path, compression="zstd"))
    buf = image_buffer(tmp_path, frames=20, capacity=1000, history=0.5, spec=SPEC_RAW)
    fleet = Fleet(chunk=5, spec=SPEC_RAW)
    for lengths in ([7, 5], [12], [3, 9]):
        fleet.segment(buf, lengths)
    assert buf.history is not None and len(buf.history.groups) == len(buf.segments())
    seen: set[tuple[int, int, int]] = set()
    for seed in range(20):
        seen |= set(check_frames(buf.sample(128, np.random.default_rng(seed))))
    assert seen == set(fleet.rows)
    assert {g.mapped for g in buf.history._cache.values()} == {False}


def test_layout_rebuilds_a_camera_missing_a_next_frame_another_camera_stores():
    import pyarrow as pa

    from cloud.buffer.images import layout

    spec = EpisodeSpec(observation={"a": FieldSpec((1, 1, 1), "uint8"), "b": FieldSpec((1, 1, 1), "uint8")},
                       action_dim=1)
    obs = {"a": np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1), "b": np.arange(10, 14, dtype=np.uint8).reshape(4, 1, 1, 1)}
    nxt = {"a": pa.array([None, b"\x63", None, b"\x64"], pa.binary(1)),  # a stores a next frame on row 1, b does not
           "b": pa.array([None, None, None, b"\x65"], pa.binary(1))}
    tf = layout(obs, nxt, spec, np.arange(4))
    assert tf.present.tolist() == [False, True, False, True] and tf.valid.all() and tf.count == 6
    for cam, want_next in (("a", [1, 99, 3, 100]), ("b", [11, 12, 13, 101])):
        o, n = np.empty((4, 1, 1, 1), np.uint8), np.empty((4, 1, 1, 1), np.uint8)
        tf.gather(cam, np.arange(4), o, n)
        assert o.ravel().tolist() == obs[cam].ravel().tolist() and n.ravel().tolist() == want_next
    ring = np.zeros((6, 1, 1, 1), np.uint8)
    tf.put("b", ring, 0)  # one sequence for both cameras: b's slot after row 1 holds row 2's frame
    assert ring.ravel().tolist() == [10, 11, 12, 12, 13, 101]


def test_a_chunk_longer_than_a_parquet_page_still_reads_its_own_frames_in_place(tmp_path):
    """Parquet writers cut pages every 20,000 rows unless told otherwise; a second page header in the
    middle of a column chunk would shift every later frame read in place. The writer keeps each camera
    column chunk one page and says so in the file; history reads every frame of a 20,500-step chunk right."""
    tiny = EpisodeSpec(observation={"pos": FieldSpec((1,)), "cam": FieldSpec((2, 2, 3), "uint8")}, action_dim=1)
    n = 20_500

    def f(s: int) -> np.ndarray:
        x = np.zeros((2, 2, 3), np.uint8)
        x[..., 0], x[..., 1] = s & 255, s >> 8
        return x

    steps = [StepRecord({"pos": np.array([s], np.float32), "cam": f(s)}, np.zeros(1, np.float32), 0.0,
                        {"pos": np.array([s + 1], np.float32), "cam": f(s + 1)}, terminated=s == n - 1,
                        truncated=False, step=s) for s in range(n)]
    buf = ReplayBuffer(tmp_path, 100, ["pos"], image_fields=["cam"], image_memory_bytes=100 * 12, history_fraction=1.0)
    buf.check_spec(tiny)
    buf.write([("r0", 1, build_batch(tiny, "r0", "e0", steps))])
    seg = next((tmp_path / SEGMENTS).glob("*.parquet"))
    assert pq.read_metadata(seg).metadata[b"fleetrl.camera_pages"] == b"one"
    batch = buf.sample(4096, np.random.default_rng(3))
    s = batch["obs"][:, 0].astype(np.int64)
    assert s.max() > 20_000, "rows past the first 20,000 were drawn"
    got = batch[IMAGES + "cam"][:, 0, 0, :2].astype(np.int64)
    nxt = batch[NEXT_IMAGES + "cam"][:, 0, 0, :2].astype(np.int64)
    np.testing.assert_array_equal(got[:, 0] + 256 * got[:, 1], s)
    np.testing.assert_array_equal(nxt[:, 0] + 256 * nxt[:, 1], s + 1)
    assert {g.mapped for g in buf.history._cache.values()} == {True}  # read in place, not through Arrow


def test_history_over_many_segments_keeps_a_bounded_number_of_files_open(tmp_path, monkeypatch):
    """Raw frames are read from mapped segment files; a cached row group keeps its file's mapping open,
    so the cache bounds how many such groups it keeps, whatever their bytes."""
    import os

    from cloud.buffer import history

    monkeypatch.setattr(history, "MAPPED_GROUPS", 32)  # episodes are numbered in a uint8 pixel: < 256 segments
    buf = image_buffer(tmp_path, frames=20, capacity=10_000, history=1.0, spec=SPEC_RAW)
    fleet = Fleet(robots=1, chunk=4, spec=SPEC_RAW)
    for _ in range(history.MAPPED_GROUPS + history.SEGMENT_STATES + 60):
        fleet.segment(buf, [4])  # one chunk, one row group, one segment each
    before = len(os.listdir("/proc/self/fd"))
    rng = np.random.default_rng(5)
    for _ in range(40):
        check_frames(buf.sample(256, rng))
    opened = len(os.listdir("/proc/self/fd")) - before
    mapped = sum(g.mapped for g in buf.history._cache.values())
    assert 0 < mapped <= history.MAPPED_GROUPS
    assert opened <= history.MAPPED_GROUPS + history.SEGMENT_STATES + 8, opened
