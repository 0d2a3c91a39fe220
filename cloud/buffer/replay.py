"""The replay buffer: parts composed the way TorchRL composes its buffers.

Durable storage (``storage.SegmentStore``: sealed Parquet segments and the
manifest), memory storage (``memory.RingStorage``), the write path
(``writer``: segment first, then memory), a sampler (``sampler``) and a
transform applied on sample (``transform``). The buffer wires them, adopts
the run's spec, and is the only way in to the manifest: others read marks,
tags and accounting through its read-only methods.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from shared.errors import ConfigError, SchemaError
from shared.observations import image_shapes
from shared.schema import EpisodeSpec

from .demos import DemoRing, demo_spec, online_rows
from .history import DiskHistory
from .memory import FrameRing, RingStorage
from .outcomes import EpisodeOutcomes
from .sampler import UniformSampler
from .specs import spec_difference
from .source import IMAGES, NEXT_IMAGES, Batch, Dims, Relabel
from .storage import SegmentInfo, SegmentStore
from .transform import NormaliseAction, Transform
from .writer import FRAME, ChunkWriter, Item, RingWriter, pack

log = logging.getLogger("fleetrl.buffer")


class ReplayBuffer:
    """A ``SampleSource`` over one data dir; ``write`` is the only way rows get in."""

    def __init__(self, root: Path, memory_capacity: int, obs_fields: list[str] | None = None,
                 sampler: UniformSampler | None = None, image_fields: Sequence[str] = (),
                 image_memory_bytes: int = 2 << 30, history_fraction: float = 0.0,
                 history_cache_bytes: int = 512 << 20, demo_capacity: int = 0, demo_paths: Sequence[Path] = (),
                 relabel: Relabel | None = None, chunk_horizon: int = 0):
        if not 0.0 <= history_fraction <= 1.0:
            raise ValueError(f"history_fraction must be in [0, 1], got {history_fraction}")
        self.store = SegmentStore(root)
        self.memory_capacity = memory_capacity
        self.requested_fields = obs_fields
        self.image_fields = list(image_fields)
        self.image_memory_bytes, self.history_fraction = image_memory_bytes, history_fraction
        self.history_cache_bytes = history_cache_bytes
        self.demo_capacity, self.demo_paths = demo_capacity, [Path(p) for p in demo_paths]
        self.demos: DemoRing | None = None  # demonstration and intervention rows (state runs, demo_capacity > 0)
        self.chunk_horizon = chunk_horizon  # > 0: demo rows keep their next actions' chunk (a flow policy's SFT)
        self.relabel = relabel  # rewards rewritten as rows are indexed (a success classifier)
        self.sampler = sampler or UniformSampler()
        self.spec: EpisodeSpec | None = None
        self.obs_fields: list[str] = []
        self.memory: RingStorage | None = None
        self.frames: FrameRing | None = None  # camera frames of the rows in memory (with image_fields)
        self.history: DiskHistory | None = None  # rows memory no longer holds (with image_fields)
        self._recent = 0  # with image_fields: the newest rows in memory whose frames are all still held
        self._writer: RingWriter | None = None
        self._transforms: list[Transform] = []
        self.rows_by_robot: dict[str, int] = {}
        self._wire: dict[str, EpisodeSpec] = {}  # each linked robot's own spec (its chunks' layout)
        self.outcomes = EpisodeOutcomes()  # recent episodes' success and return
        if self.demo_paths and (self.image_fields or demo_capacity <= 0):
            raise ConfigError("learner.demo_paths: demonstrations are kept for state-only runs (no image_fields) "
                              "whose algorithm uses them (rlpd, bc, hg_dagger, or bc_pretrain_updates > 0); this run "
                              f"has image_fields {self.image_fields} and a demo ring of {demo_capacity} rows")
        if self.store.manifest.spec is not None:
            self._adopt(EpisodeSpec.from_dict(self.store.manifest.spec).current())
            self._import_demos()
            self._reload()
        elif self.demo_paths:  # a new run takes its spec from its demonstrations; robots must match them
            self._adopt(demo_spec(self.demo_paths[0]))
            self._import_demos()
            assert self.spec is not None
            self.store.set_spec(self.spec.to_dict())

    # ------------------------------------------------------------ SampleSource

    @property
    def size(self) -> int:
        if self.memory is None:
            return 0
        if self.frames is None:
            return self.memory.size
        with self.memory.lock:
            return self._recent + (self._history_rows() if self.history_fraction > 0 else 0)

    def _history_rows(self) -> int:
        """Stored rows memory no longer serves (the oldest ones); call under the memory lock."""
        return self.history.rows - self._recent if self.history is not None else 0

    @property
    def added(self) -> int:
        return self.memory.added if self.memory is not None else 0

    @property
    def dims(self) -> Dims | None:
        if self._writer is None or self.spec is None:
            return None
        shapes = image_shapes(self.spec)
        return Dims(self._writer.obs_dim, self._writer.act_dim, tuple(self.obs_fields),
                    tuple((f, shapes[f]) for f in self.image_fields))

    @property
    def rows(self) -> int:
        return self.store.rows

    @property
    def segment_count(self) -> int:
        return len(self.store.manifest.segments)

    @property
    def demo_size(self) -> int:
        """Demonstration and intervention rows a sample can draw from."""
        return self.demos.size if self.demos is not None else 0

    @property
    def demo_added(self) -> int:
        return self.demos.added if self.demos is not None else 0

    def sample(self, batch_size: int, rng: np.random.Generator, demo_fraction: float = 0.0) -> Batch:
        """Uniform rows from memory, actions normalised to [-1, 1].

        ``demo_fraction`` of the batch (rounded) comes from the demo ring while it has rows.
        With cameras, also their frames; and ``history_fraction`` of the batch from
        rows on disk that memory no longer holds (all of it while memory holds none).
        """
        if self.memory is None:
            raise ValueError("cannot sample before the run's spec is known")
        if self.frames is None:
            n_demo = int(round(batch_size * demo_fraction)) if self.demo_size > 0 else 0
            batch = {}
            if n_demo < batch_size:
                with self.memory.lock:  # one size for the draw and the rows it names
                    batch = self.memory.get(self.sampler.indices(self.memory.size, batch_size - n_demo, rng))
            if n_demo:
                assert self.demos is not None
                demo = self.demos.sample(n_demo, rng)
                batch = {k: np.concatenate([batch[k], v]) for k, v in demo.items()} if batch else demo
        else:
            batch = self._sample_images(batch_size, rng)
        for t in self._transforms:
            batch = t(batch)
        return batch

    def _sample_images(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """Rows and frames written straight into one batch (memory's rows first, then history's): no concatenation."""
        assert self.memory is not None and self.frames is not None and self.history is not None
        assert self._writer is not None
        out = self._writer.empty_batch(batch_size)
        plan = None
        with self.memory.lock:  # frames are overwritten under this lock: rows and their frames read as one
            recent, old = self._recent, self._history_rows() if self.history_fraction > 0 else 0
            n_old = 0 if old <= 0 else batch_size if recent == 0 else int(round(batch_size * self.history_fraction))
            n_new = batch_size - n_old
            k = self.sampler.indices(recent, n_new, rng) if n_new > 0 else None
            if n_old:  # row groups start loading now, while memory's rows are gathered
                plan = self.history.start(n_old, old, rng)
            if k is not None:
                rows = self.memory.get(self.memory.chronological(self.memory.size - recent + k))
                frame = rows.pop(FRAME)
                for key, v in rows.items():
                    out[key][:n_new] = v
                for f in self.image_fields:
                    self.frames.take(f, frame, out[IMAGES + f][:n_new])
                    self.frames.take(f, frame + 1, out[NEXT_IMAGES + f][:n_new])
        if plan is not None:  # sealed segments do not change: read outside the lock
            self.history.finish(plan, out, n_new, rng)
        return out

    # ------------------------------------------------- the manifest, read-only

    @property
    def run_id(self) -> str:
        return self.store.manifest.run_id

    @property
    def recovery_report(self) -> dict[str, Any]:
        """What opening the segments found (stray segments removed)."""
        return self.store.recovery_report

    def hwm(self, robot_id: str) -> int:
        """The robot's highest durable stream seq (0: nothing stored)."""
        return self.store.manifest.hwm.get(robot_id, 0)

    def marks(self) -> dict[str, int]:
        """Every robot's durable mark (a copy)."""
        return dict(self.store.manifest.hwm)

    def robot_bytes(self, robot_id: str) -> int:
        """Disk bytes of this robot's stored rows (its share of each segment)."""
        return (self.store.manifest.robot_bytes or {}).get(robot_id, 0)

    def segments(self) -> tuple[SegmentInfo, ...]:
        """The sealed segments, oldest first."""
        return tuple(self.store.manifest.segments)

    def segment_paths(self) -> list[Path]:
        """The sealed segments' files, oldest first (for readers that decode rows themselves)."""
        return [self.store.seg_dir / s.name for s in self.store.manifest.segments]

    def read_segment(self, seg: SegmentInfo, columns: list[str] | None = None) -> pa.Table:
        return self.store.read_segment(seg.name, columns)

    def lost(self) -> list[dict[str, Any]]:
        """Ranges robots reported damaged (copies)."""
        return [dict(x) for x in self.store.manifest.lost]

    def extra(self, key: str) -> Any:
        """A caller's own durable tag in the manifest (None if unset); treat it as read-only."""
        return self.store.manifest.extra.get(key)

    def set_extra(self, key: str, value: Any) -> None:
        """Store a tag durably in the manifest. Blocking (an fsynced manifest write)."""
        self.store.set_extra(key, value)

    # ------------------------------------------------------------------ writes

    def check_spec(self, spec: EpisodeSpec, robot_id: str | None = None) -> None:
        """The first robot fixes the run's spec; later robots must match it.

        A robot of an older fleetrl may send an older layout of the same spec: its chunks are
        decoded in its layout (``wire_spec``) and stored in this build's."""
        if self.spec is None:
            current = spec.current()
            self._adopt(current)
            self.store.set_spec(current.to_dict())
            log.info("event=run_spec_set fields=%s action_dim=%d", list(spec.observation), spec.action_dim)
        elif spec != self.spec:
            raise SchemaError(f"robot's episode spec differs from this run's spec: {spec_difference(self.spec, spec)}",
                              code="spec_mismatch")
        if robot_id is not None:
            self._wire[robot_id] = spec

    def wire_spec(self, robot_id: str) -> EpisodeSpec | None:
        """The layout this robot's chunks come in (its hello's spec; the run's if it sent none here)."""
        return self._wire.get(robot_id, self.spec)

    def _adopt(self, spec: EpisodeSpec) -> None:
        if self.relabel is not None:
            self.relabel.check(spec)
        fields = self.requested_fields or spec.state_fields
        missing = [f for f in fields if f not in spec.state_fields]
        if missing:
            raise SchemaError(f"learner.observation_fields names fields robots do not record: {missing}")
        unknown = [f for f in self.image_fields if f not in spec.image_fields]
        if unknown:
            raise SchemaError(f"learner.image_fields names fields robots do not record as cameras: {unknown} "
                              f"(cameras: {spec.image_fields})")
        writer = RingWriter(spec, list(fields), self.image_fields)
        frames = None
        if self.image_fields:  # built before anything is adopted: a refusal leaves the buffer without a spec
            try:
                frames = FrameRing(self.image_memory_bytes, writer.image_shapes())
            except ValueError as e:
                raise SchemaError(f"learner.image_memory_mb is too small for these cameras: {e}") from None
        self.spec = spec
        self.obs_fields = list(fields)
        self._writer = writer
        self.memory = RingStorage(self.memory_capacity, writer.columns(), writer.dtypes())
        if frames is not None:
            self.frames = frames
            self.history = DiskHistory(self.store.seg_dir, writer, self.history_cache_bytes)
        self._transforms = [NormaliseAction(spec)]
        if self.demo_capacity > 0 and frames is None:
            demo_writer = ChunkWriter(spec, list(fields), self.chunk_horizon) if self.chunk_horizon > 0 else writer
            self.demos = DemoRing(self.demo_capacity, demo_writer, self.relabel)

    def _import_demos(self) -> None:
        """``learner.demo_paths`` into the demo ring (all or nothing; ConfigError naming the path and field)."""
        if self.demos is not None and self.demo_paths:
            assert self.spec is not None
            n = self.demos.load_imports(self.demo_paths, self.spec)
            log.info("event=demos_imported paths=%d rows=%d demo_rows=%d", len(self.demo_paths), n, self.demos.size)

    def _reload(self) -> None:
        """Recovery: newest segments back into memory, until it is full."""
        assert self.memory is not None
        segments = self.store.manifest.segments
        need, tables = self.memory_capacity, []
        frames_need = self.frames.capacity if self.frames is not None else need
        for seg in reversed(segments):
            if need <= 0 or frames_need <= 0:  # older rows would be overwritten (rows or their frames)
                break
            table = self.store.read_segment(seg.name)
            tables.append(table)
            if self.demos is None:
                need -= seg.rows
                frames_need -= seg.rows  # a row brings at least one frame
            else:  # state rows; recorded demonstrations go to the demo ring and leave memory's room to older rows
                need -= online_rows(table).num_rows
        if self.history is not None:
            for seg in segments[: len(segments) - len(tables)]:
                self.history.add(seg.name)
        if self.demos is not None:  # demo rows older than memory's, before those memory's rows bring
            self.demos.reload(self.store.seg_dir, segments[: len(segments) - len(tables)], self.store.read_segment)
        for seg, t in zip(segments[len(segments) - len(tables):], reversed(tables)):
            self._index(t, seg.name)
        for seg in segments:
            for rid, (_, _, rows) in seg.robots.items():
                self.rows_by_robot[rid] = self.rows_by_robot.get(rid, 0) + rows
        log.info("event=buffer_recovered segments=%d rows=%d in_memory=%d demo_rows=%d", len(segments), self.rows,
                 self.memory.size, self.demo_size)

    def _index(self, table: pa.Table, segment: str | None = None) -> None:
        assert self.memory is not None and self._writer is not None and self.spec is not None
        sent = table  # what robots sent: the episode statistics below read its own flags
        if self.relabel is not None:
            table = self.relabel(table, self.spec)
        if self.frames is None:
            if self.demos is not None:  # demonstrations go to the demo ring only, interventions to both (HIL-SERL)
                self.demos.add(table, scored=True)
                table = online_rows(table)
            self._writer.write(self.memory, table)
        else:
            assert self.history is not None
            frames = self._writer.frames(table)  # decoded before the lock: samplers do not wait on it
            with self.memory.lock:  # no sample sees the segment, the rows and their frames apart
                if segment is not None:
                    self.history.add(segment)
                self._writer.write(self.memory, table, self.frames, frames)
                self._recount()
        live = online_rows(sent)  # recorded demonstrations say nothing of how the policy does
        self.outcomes.add(live)

    def write(self, items: list[Item]) -> None:
        """Make chunks (and reported losses) durable as one sealed segment, then index them. Blocking."""
        packed = pack(items)
        info = self.store.write_segment(packed.table, packed.robots, packed.lost)
        for rid, (_, _, rows) in packed.robots.items():
            self.rows_by_robot[rid] = self.rows_by_robot.get(rid, 0) + rows
        if packed.table is not None:
            self._index(packed.table, info.name if info is not None else None)

    def _recount(self) -> None:
        """How many of the newest rows in memory still have their frames (rows keep frame numbers in order)."""
        assert self.memory is not None and self.frames is not None
        with self.memory.lock:
            frame, size, floor = self.memory.data[FRAME], self.memory.size, self.frames.floor
            lo, hi = 0, size  # the first row, oldest first, whose obs frame is still held
            while lo < hi:
                mid = (lo + hi) // 2
                if frame[self.memory.chronological(np.int64(mid))] >= floor:
                    hi = mid
                else:
                    lo = mid + 1
            self._recent = size - lo

    @property
    def episodes(self) -> deque[dict[str, Any]]:
        """The newest episodes' outcomes (robot, success, policy version, return)."""
        return self.outcomes.episodes

    @property
    def episodes_total(self) -> int:
        return self.outcomes.total

    def success_rate(self, last: int = 50) -> float | None:
        return self.outcomes.success_rate(last)

    def mean_return(self, last: int = 50) -> float | None:
        return self.outcomes.mean_return(last)
