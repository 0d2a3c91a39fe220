"""History from disk: rows memory no longer holds, sampled from the sealed Parquet segments.

Image segments are written in small row groups of whole chunks, frames
uncompressed, one page per column chunk (``storage.SegmentStore``). A draw
picks a few row groups (about one per ``draws_per_group`` rows), weighted by
their rows, then rows uniformly within them (distinct where the group has
enough): every stored row is equally likely, and a batch touches a few row
groups, not one per row. Next frames are rebuilt inside the row group (a row
group ends on a chunk's last row, which keeps its own next frame).

Row groups are kept in an LRU bounded by bytes: their small columns, the few
stored next frames and the layout. Raw obs frames are not copied there: they
are read in place from the mapped segment file (the page's values are the
frames, back to back), so a draw reads just its frames and the OS page cache
is their cache. PNG/JPEG frames (or files of another layout) are decoded,
and the decoded frames are what the LRU holds.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.frames import decode_frames
from shared.schema import NEXT_PREFIX, OBS_PREFIX

from .images import TableFrames, layout
from .storage import ONE_PAGE_KEY
from .source import IMAGES, NEXT_IMAGES, Batch
from .writer import HUMAN_COLUMNS, RingWriter

FOOTERS = 256  # segment footers kept, so a row-group read does not parse its file's footer again
MAPPED_GROUPS = 192  # cached row groups whose frames are views of a mapped file (each keeps its file open)
SEGMENT_STATES = 64  # segments whose small columns (state, action, reward, ...) are kept whole, and files mapped
MAX_PAGE_HEADER = 4096  # bytes: more before a column chunk's values than one page header takes means another layout

log = logging.getLogger("fleetrl.buffer")
READ_THREADS = 4  # row groups a process reads side by side (Parquet and numpy release the GIL)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _reader() -> ThreadPoolExecutor:
    """One pool for every buffer in the process: no threads left behind by buffers that are gone."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="fleetrl-history")
        return _pool


@dataclass
class _Group:
    rows: dict[str, np.ndarray]  # the ring's columns for the group's rows
    frames: TableFrames
    mapped: bool = False  # obs frames are views of the mapped file (the OS page cache holds them, not the LRU)

    @property
    def nbytes(self) -> int:
        own = self.frames.nbytes - (sum(a.nbytes for a in self.frames.obs.values()) if self.mapped else 0)
        return sum(a.nbytes for a in self.rows.values()) + own


@dataclass
class _SegmentState:
    rows: dict[str, np.ndarray]  # the ring's columns, every row of the segment
    step: np.ndarray
    starts: np.ndarray  # first row of each row group; last: rows
    frames_at: dict[str, list[int]] | None  # per camera, the file offset of each row group's raw obs frames


@dataclass
class Plan:
    """A history draw begun: (group, rows of it below the limit, draws) in order, and its groups."""

    draws: list[tuple[int, int, int]]
    groups: dict[int, _Group] = field(default_factory=dict)  # cached ones
    reads: dict[int, Future[_Group] | None] = field(default_factory=dict)  # the others (None: read on finish)


class DiskHistory:
    """Row groups of sealed segments in stored order; samples rows below a limit (those memory lost)."""

    def __init__(self, seg_dir: Path, writer: RingWriter, cache_bytes: int = 512 << 20, draws_per_group: int = 32,
                 parallel_reads: bool = True):
        if draws_per_group < 1:
            raise ValueError(f"draws_per_group must be at least 1, got {draws_per_group}")
        self.seg_dir, self.writer = Path(seg_dir), writer
        self.cache_bytes, self.draws_per_group, self.parallel_reads = cache_bytes, draws_per_group, parallel_reads
        self._footers: OrderedDict[str, pq.FileMetaData] = OrderedDict()
        self.groups: list[tuple[str, int]] = []  # (segment name, row group index), in stored order
        self._starts: list[int] = [0]  # first global row of each group; last: rows indexed
        self._starts_np = np.zeros(1, np.int64)
        self._cache: OrderedDict[tuple[str, int], _Group] = OrderedDict()
        self._cached = 0  # bytes in the cache
        self._lock = threading.Lock()  # the index grows on the write path while the sampler reads it
        self._cache_lock = threading.Lock()  # the LRU (held briefly: reads and draws happen outside it)
        self.loads = 0  # row groups read from disk (hits are the rest)
        self.state_columns = ([OBS_PREFIX + f for f in writer.obs_fields] + [NEXT_PREFIX + f for f in writer.obs_fields]
                              + ["action", "reward", "terminated", "step", *HUMAN_COLUMNS])
        self.image_columns = [p + f for f in writer.image_fields for p in (OBS_PREFIX, NEXT_PREFIX)]
        self._states: OrderedDict[str, _SegmentState] = OrderedDict()  # small columns of recent segments, whole
        self._maps: OrderedDict[str, np.memmap] = OrderedDict()  # segment files mapped for their raw frames

    @property
    def rows(self) -> int:
        """Rows indexed (every sealed segment's, including those memory also holds)."""
        return self._starts[-1]

    def add(self, name: str) -> None:
        """Index a sealed segment (after every one before it)."""
        md = pq.read_metadata(self.seg_dir / name)
        with self._lock:
            for i in range(md.num_row_groups):
                self.groups.append((name, i))
                self._starts.append(self._starts[-1] + md.row_group(i).num_rows)
            self._starts_np = np.asarray(self._starts, np.int64)

    def _footer(self, name: str) -> pq.FileMetaData:
        with self._lock:
            md = self._footers.get(name)
        if md is None:
            md = pq.read_metadata(self.seg_dir / name)
            with self._lock:
                self._footers[name] = md
                while len(self._footers) > FOOTERS:
                    self._footers.popitem(last=False)
        return md

    def _state(self, name: str, md: pq.FileMetaData) -> _SegmentState:
        """A segment's small columns, read whole once (one read instead of one per row group)."""
        with self._lock:
            st = self._states.get(name)
            if st is not None:
                self._states.move_to_end(name)
                return st
        present = set(md.schema.to_arrow_schema().names)  # segments of an older layout lack the human columns (read as zeros)
        t = pq.ParquetFile(self.seg_dir / name, metadata=md, memory_map=True).read(
            [c for c in self.state_columns if c in present], use_threads=False)
        starts = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
        st = _SegmentState(self.writer.rows(t), t.column("step").to_numpy(), starts, self._frames_at(name, md))
        with self._lock:
            self._states[name] = st
            while len(self._states) > SEGMENT_STATES:
                self._states.popitem(last=False)
        return st

    def _frames_at(self, name: str, md: pq.FileMetaData) -> dict[str, list[int]] | None:
        """Where each row group's raw obs frames lie in the file, per camera, when a column chunk is one
        uncompressed page of plain fixed-size values (as ``storage`` writes raw cameras): its values are its
        last rows x frame bytes. Then a draw reads only its frames, from the OS page cache or the disk,
        with no decoding. None (decode row groups with Arrow) for anything else: PNG/JPEG, older files."""
        if md.num_row_groups == 0 or (md.metadata or {}).get(ONE_PAGE_KEY) != b"one":
            return None  # the writer did not promise one page per camera column chunk
        leaf = {md.schema.column(j).path: j for j in range(len(md.schema))}
        out: dict[str, list[int]] = {}
        for f in self.writer.image_fields:
            size = self.writer.spec.observation[f].size
            j = leaf.get(OBS_PREFIX + f)
            if j is None:
                return None
            sc = md.schema.column(j)
            if sc.physical_type != "FIXED_LEN_BYTE_ARRAY" or sc.length != size or sc.max_definition_level != 0:
                return None
            out[f] = []
            for g in range(md.num_row_groups):
                c = md.row_group(g).column(j)
                header = c.total_compressed_size - md.row_group(g).num_rows * size
                if (c.compression != "UNCOMPRESSED" or c.has_dictionary_page or not 0 < header <= MAX_PAGE_HEADER
                        or c.total_compressed_size != c.total_uncompressed_size):
                    return None
                out[f].append(c.data_page_offset + header)
        # Check the layout against Arrow's reading of the first row group: a second page would shift its frames.
        mm = self._map(name)
        t = pq.ParquetFile(self.seg_dir / name, metadata=md, memory_map=True).read_row_group(
            0, columns=[OBS_PREFIX + f for f in out], use_threads=False)
        n = md.row_group(0).num_rows
        for f, at in out.items():
            fs = self.writer.spec.observation[f]
            want = decode_frames(t.column(OBS_PREFIX + f), fs)[0]
            got = mm[at[0] : at[0] + n * fs.size].reshape(n, *fs.shape)
            if not np.array_equal(got, want):  # every frame of the first row group (<= a chunk or ~64 rows)
                log.warning("event=history_frames_not_mapped segment=%s camera=%s (decoding row groups instead)", name, f)
                return None
        return out

    def _map(self, name: str) -> np.memmap:
        with self._lock:
            mm = self._maps.get(name)
            if mm is not None:
                self._maps.move_to_end(name)
                return mm
        mm = np.memmap(self.seg_dir / name, np.uint8, mode="r")
        with self._lock:
            self._maps[name] = mm
            while len(self._maps) > SEGMENT_STATES:
                self._maps.popitem(last=False)
        return mm

    def _read(self, gi: int) -> _Group:
        """Read one row group (any thread): its frames mapped where the file allows, else decoded by Arrow."""
        name, idx = self.groups[gi]
        md = self._footer(name)
        st = self._state(name, md)
        a, b = int(st.starts[idx]), int(st.starts[idx + 1])
        rows = {k: v[a:b] for k, v in st.rows.items()}
        mapped = st.frames_at is not None
        cols = [NEXT_PREFIX + c for c in self.writer.image_fields] if mapped else self.image_columns
        with pq.ParquetFile(self.seg_dir / name, metadata=md, memory_map=True) as f:
            t = f.read_row_group(idx, columns=cols, use_threads=False)
        if st.frames_at is None:
            t = t.append_column("step", pa.array(st.step[a:b]))  # lets the frame layout check the rows' order
            return _Group(rows, self.writer.frames(t))
        mm, obs = self._map(name), {}
        for c, at in st.frames_at.items():
            fs = self.writer.spec.observation[c]
            obs[c] = mm[at[idx] : at[idx] + (b - a) * fs.size].reshape(b - a, *fs.shape)
        frames = layout(obs, {c: t.column(NEXT_PREFIX + c) for c in self.writer.image_fields}, self.writer.spec,
                        st.step[a:b])
        return _Group(rows, frames, mapped=True)

    def sample(self, n: int, limit: int, rng: np.random.Generator) -> Batch:
        """``n`` rows drawn uniformly from the first ``limit`` stored rows, with their frames."""
        out = self.writer.empty_batch(n)
        self.finish(self.start(n, limit, rng), out, 0, rng)
        return out

    def start(self, n: int, limit: int, rng: np.random.Generator) -> Plan:
        """Pick the row groups of a draw of ``n`` rows below ``limit`` and start reading those not cached
        (on the read threads, so the caller can gather its memory rows meanwhile); ``finish`` draws the rows."""
        if limit <= 0 or n <= 0:
            raise ValueError(f"history sample of {n} rows from {limit}")
        with self._lock:
            starts = self._starts_np  # replaced, never changed in place, as segments are added
        if limit > starts[-1]:
            raise ValueError(f"history sample below row {limit}, but {starts[-1]} rows are indexed")
        k = int(np.searchsorted(starts, limit, side="left"))  # groups starting below the limit
        weights = (np.minimum(starts[1 : k + 1], limit) - starts[:k]).astype(np.float64)
        picked = rng.choice(k, size=math.ceil(n / self.draws_per_group), p=weights / weights.sum())
        counts = np.bincount(rng.integers(0, len(picked), n), minlength=len(picked))  # draws per picked group
        draws = [(int(gi), int(weights[gi]), int(m)) for gi, m in zip(picked.tolist(), counts.tolist()) if m]
        plan = Plan(draws)
        with self._cache_lock:
            for gi in dict.fromkeys(gi for gi, _, _ in draws):
                g = self._cache.get(self.groups[gi])
                if g is not None:
                    self._cache.move_to_end(self.groups[gi])
                    plan.groups[gi] = g
                else:
                    plan.reads[gi] = None
        if self.parallel_reads and plan.reads:
            pool = _reader()
            for gi in plan.reads:
                plan.reads[gi] = pool.submit(self._read, gi)
        return plan

    def finish(self, plan: Plan, out: Batch, at: int, rng: np.random.Generator) -> None:
        """Draw a started plan's rows into rows ``at`` .. of the batch ``out``."""
        loaded = {gi: (f.result() if f is not None else self._read(gi)) for gi, f in plan.reads.items()}
        with self._cache_lock:
            for gi, g in loaded.items():
                old = self._cache.pop(self.groups[gi], None)  # another sampler may have read it too
                self._cached += g.nbytes - (old.nbytes if old is not None else 0)
                self._cache[self.groups[gi]] = g
            self.loads += len(loaded)
            while self._cached > self.cache_bytes and len(self._cache) > 1:
                self._cached -= self._cache.popitem(last=False)[1].nbytes
            self._limit_mapped()
        groups = {**plan.groups, **loaded}
        for gi, below, m in plan.draws:
            self._draw(groups[gi], gi, below, rng, out, at, m)
            at += m

    def _limit_mapped(self) -> None:
        """Each mapped group keeps its segment's mapping (and so a file descriptor) alive; a mapped group's
        own bytes are few, so the byte budget alone would let thousands pile up. Oldest ones go first."""
        mapped = [k for k, g in self._cache.items() if g.mapped]
        for k in mapped[: max(0, len(mapped) - MAPPED_GROUPS)]:
            self._cached -= self._cache.pop(k).nbytes

    def _draw(self, g: _Group, gi: int, below: int, rng: np.random.Generator, out: Batch, at: int, m: int) -> None:
        ok = np.flatnonzero(g.frames.valid[:below])
        if ok.size == 0:
            name, idx = self.groups[gi]
            raise ValueError(f"row group {idx} of segment {name} holds no row with a known next frame "
                             f"(it does not end on a chunk's last row)")
        rows = rng.choice(ok, size=m, replace=m > ok.size)  # distinct rows where the group has enough
        for k, v in g.rows.items():
            out[k][at : at + m] = v[rows]
        for f in self.writer.image_fields:
            g.frames.gather(f, rows, out[IMAGES + f][at : at + m], out[NEXT_IMAGES + f][at : at + m])
