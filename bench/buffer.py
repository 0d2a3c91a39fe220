"""buffer: image sampling from a buffer whose data is mostly on disk, and recovery after SIGKILL.

Sampling: camera-noisy image transitions are sealed into Parquet segments by
the product's own ReplayBuffer.write (the layout ingest produces). The
product's memory ring holds state fields only (``cloud/buffer/writer.py``:
"images stay on disk"), so this benchmark samples batches of 256 (both
frames, action, reward, done) from the segments with an image replay that is
a ``SampleSource`` like the product's buffers: random rows (the product's
``UniformSampler``), their row groups decoded through an LRU that
holds ~10 % of the data. Baseline in the same run: the same batches gathered
from the same frames held in memory as uint8 arrays.

Recovery: a buffer of 1M state transitions (100 sealed segments, written by
ReplayBuffer.write); a real ``cloud serve`` starts on it, is killed with
SIGKILL, and restarted: time from spawn to READY (manifest read, every
segment footer checked, memory ring reloaded). Baseline: a cold start of an
empty buffer (same command, empty data_dir).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cloud.buffer import Batch, Dims, SampleSource, UniformSampler

from . import common as C

BATCH = 256


class DiskSampler:
    """Image replay: uniform random rows from sealed segments; decoded row groups in an LRU (bench-side).

    A ``cloud.buffer.SampleSource`` like the product's buffers, drawing rows with the product's sampler.
    """

    def __init__(self, paths: list[Path], cache_rows: int, img_shape: tuple[int, ...], act_dim: int = 4):
        self.groups = []  # (path, row group index, rows)
        for p in paths:
            md = pq.read_metadata(p)
            for i in range(md.num_row_groups):
                self.groups.append((p, i, md.row_group(i).num_rows))
        self.starts = np.cumsum([0] + [g[2] for g in self.groups])
        self.total = int(self.starts[-1])
        self.segment_count = len(paths)
        self.dims = Dims(int(np.prod(img_shape)), act_dim, ("camera",))
        self.sampler = UniformSampler()
        self.cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.cache_rows, self.cached_rows = cache_rows, 0
        self.shape = img_shape
        self.loads = 0

    def _group(self, gi: int) -> dict[str, np.ndarray]:
        if gi in self.cache:
            self.cache.move_to_end(gi)
            return self.cache[gi]
        path, idx, n = self.groups[gi]
        t = pq.ParquetFile(path).read_row_group(idx, columns=["obs.camera", "next_obs.camera", "action", "reward",
                                                               "terminated"])
        self.loads += 1

        def img(col: str) -> np.ndarray:
            arr = t.column(col).combine_chunks()
            return np.frombuffer(arr.buffers()[1], np.uint8, count=n * int(np.prod(self.shape)),
                                 offset=arr.offset * int(np.prod(self.shape))).reshape(n, *self.shape)

        g = {"obs": img("obs.camera"), "next_obs": img("next_obs.camera"),
             "action": t.column("action").combine_chunks().flatten().to_numpy().reshape(n, -1),
             "reward": t.column("reward").to_numpy(), "terminated": t.column("terminated").to_numpy(zero_copy_only=False)}
        self.cache[gi] = g
        self.cached_rows += n
        while self.cached_rows > self.cache_rows and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.cached_rows -= len(old["reward"])
        return g

    @property
    def size(self) -> int:
        return self.total

    added = rows = size

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        rows = self.sampler.indices(self.total, batch_size, rng)
        gi = np.searchsorted(self.starts, rows, side="right") - 1
        out = {k: [] for k in ("obs", "next_obs", "action", "reward", "terminated")}
        for g in np.unique(gi):
            local = rows[gi == g] - self.starts[g]
            grp = self._group(int(g))
            for k in out:
                out[k].append(grp[k][local])
        return {k: np.concatenate(v) for k, v in out.items()}


def drop_page_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sampling(root: Path, n: int, res: C.Result, quick: bool) -> None:
    from cloud.buffer import ReplayBuffer
    from shared.chunk import StepRecord, build_batch

    spec, obs = C.observations("noisy", 200)
    buf = ReplayBuffer(root / "img" / "buffer", 1000)
    buf.check_spec(spec)
    rng = np.random.default_rng(0)
    seq, per_segment = 0, 500
    for start in range(0, n, per_segment):
        items = []
        for c in range(start, min(n, start + per_segment), 50):
            steps = [StepRecord(obs=obs[k % 200], action=rng.uniform(-1, 1, 4).astype(np.float32), reward=-1.0,
                                next_obs=obs[k % 200 + 1], terminated=False, truncated=k % 50 == 49, step=k % 50)
                     for k in range(c, min(n, c + 50))]
            seq += 1
            items.append(("img-robot", seq, build_batch(spec, "img-robot", f"ep{c // 50}", steps)))
        buf.write(items)
    paths = buf.segment_paths()
    drop_page_cache(paths)
    sampler = DiskSampler(paths, cache_rows=max(BATCH, n // 10), img_shape=(128, 128, 3))
    assert isinstance(sampler, SampleSource)  # the protocol the trainer samples through
    # memory baseline: the same frames as uint8 arrays (each transition's own obs/next_obs frames)
    idx = np.arange(n) % 200
    stack = np.stack([o["camera"] for o in obs[:201]])
    mem = {"obs": stack[idx], "next_obs": stack[idx + 1], "action": rng.uniform(-1, 1, (n, 4)).astype(np.float32),
           "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool)}

    def mem_sample(batch_size: int, r: np.random.Generator) -> Batch:
        rows = r.integers(0, n, batch_size)
        return {k: v[rows] for k, v in mem.items()}

    budget = 1.5 if quick else 8.0

    def rate(fn) -> float:
        r = np.random.default_rng(1)
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < budget or k < 2:
            b = fn(BATCH, r)
            assert b["obs"].shape == (BATCH, 128, 128, 3)
            k += 1
        return k / (time.perf_counter() - t0)

    base = rate(mem_sample)
    disk = rate(sampler.sample)
    mb = BATCH * 2 * 128 * 128 * 3 / 1e6
    label = f"batch {BATCH}, 128x128 RGB, {n} transitions on disk, LRU 10%"
    res.add(label, "batches/s from Parquet segments", disk, "1/s", base, disk / base, "report", None)
    res.add(label, "image MB/s delivered", disk * mb, "MB/s", base * mb, disk / base)
    res.extra["sampling"] = {"transitions": n, "segments": sampler.segment_count, "row_groups": len(sampler.groups),
                             "row_group_loads": sampler.loads, "disk_batches_per_s": disk, "memory_batches_per_s": base,
                             "segment_bytes": sum(p.stat().st_size for p in paths)}


def synthetic_batch(schema: pa.Schema, n: int, first: int, rng: np.random.Generator) -> pa.RecordBatch:
    cols = []
    for f in schema:
        t = f.type
        if f.name == "robot_id":
            cols.append(pa.array(["rec-robot"] * n, t))
        elif f.name == "episode_id":
            cols.append(pa.array([f"ep{(first + i) // 50}" for i in range(n)], t))
        elif f.name == "step":
            cols.append(pa.array((np.arange(first, first + n) % 50).astype(np.int32), t))
        elif pa.types.is_fixed_size_list(t):
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * t.list_size, np.float32)), t.list_size))
        elif pa.types.is_boolean(t):
            cols.append(pa.array(((np.arange(first, first + n) % 50) == 49) if f.name == "truncated" else np.zeros(n, bool)))
        elif pa.types.is_floating(t):
            cols.append(pa.array(rng.standard_normal(n).astype(np.float32), t))
        else:
            cols.append(pa.array(np.arange(first, first + n), t))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def spawn_to_ready(learner: C.Learner, resume: bool) -> float:
    t0 = time.monotonic()
    learner.start(resume=resume, timeout=120)
    return time.monotonic() - t0


def recovery(root: Path, n: int, res: C.Result) -> None:
    from cloud.buffer import ReplayBuffer

    spec, _ = C.observations("state", 10)
    data_dir = root / "rec" / "learner"
    buf = ReplayBuffer(data_dir / "buffer", n)
    buf.check_spec(spec)
    schema = spec.arrow_schema()
    rng = np.random.default_rng(0)
    per = 10_000 if n >= 100_000 else max(1, n // 10)
    t0 = time.monotonic()
    for i, start in enumerate(range(0, n, per)):
        buf.write([("rec-robot", i + 1, synthetic_batch(schema, min(per, n - start), start, rng))])
    build_s = time.monotonic() - t0
    del buf
    cold = C.Learner(root / "cold", learner={"memory_capacity": n})
    cold_s = spawn_to_ready(cold, False)
    cold.stop()
    if n >= 100_000:  # best of two for the full run
        cold2 = C.Learner(root / "cold2", learner={"memory_capacity": n})
        cold_s = min(cold_s, spawn_to_ready(cold2, False))
        cold2.stop()
    learner = C.Learner(root / "rec", learner={"memory_capacity": n}, data_dir=data_dir)
    first_s = spawn_to_ready(learner, True)
    rows = learner.status()["buffer_rows"]
    learner.kill()  # SIGKILL: no clean shutdown
    rec_s = spawn_to_ready(learner, True)
    rows_after = learner.status()["buffer_rows"]
    learner.stop()
    label = f"SIGKILL, {n / 1e6:g}M transitions ({n // per} segments)"
    res.add(label, "restart to READY", rec_s, "s", cold_s, rec_s / cold_s, "< 10 s", rec_s < 10.0)
    res.add(label, "rows after recovery", float(rows_after), "rows", float(rows), None, "all", rows_after == rows == n)
    res.extra["recovery"] = {"transitions": n, "segments": n // per, "build_s": build_s, "first_start_s": first_s,
                             "cold_start_s": cold_s, "recovery_s": rec_s}


def run(quick: bool = False) -> C.Result:
    res = C.Result("buffer", quick)
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-buffer-") as d:
        sampling(Path(d), 300 if quick else 4000, res, quick)
        recovery(Path(d), 20_000 if quick else 1_000_000, res)
    res.notes.append("the product samples state fields from its memory ring only; image sampling here is a "
                     "bench-side sampler over the product's segments (one row group per sealed segment, as "
                     "cloud/buffer/storage.py writes them)")
    return res
