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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.errors import SchemaError
from shared.schema import EpisodeSpec

from .memory import RingStorage
from .sampler import UniformSampler
from .source import Batch, Dims
from .storage import SegmentInfo, SegmentStore
from .transform import NormaliseAction, Transform
from .writer import Item, RingWriter, pack

log = logging.getLogger("fleetrl.buffer")


def spec_difference(run: EpisodeSpec, robot: EpisodeSpec) -> str:
    """The first field that differs, with both values: what an operator needs to fix the robot or start a new run."""
    a, b = run.to_dict(), robot.to_dict()
    ra, rb = a.pop("observation"), b.pop("observation")
    for name in list(ra) + [n for n in rb if n not in ra]:
        if ra.get(name) != rb.get(name):
            return f"observation.{name}: run has {ra.get(name, 'no such field')}, robot has {rb.get(name, 'no such field')}"
    if list(ra) != list(rb):
        return f"observation field order: run has {list(ra)}, robot has {list(rb)}"
    for key in a:
        if a[key] != b.get(key):
            return f"{key}: run has {a[key]}, robot has {b.get(key)}"
    return "specs differ"


class ReplayBuffer:
    """A ``SampleSource`` over one data dir; ``write`` is the only way rows get in."""

    def __init__(self, root: Path, memory_capacity: int, obs_fields: list[str] | None = None,
                 sampler: UniformSampler | None = None):
        self.store = SegmentStore(root)
        self.memory_capacity = memory_capacity
        self.requested_fields = obs_fields
        self.sampler = sampler or UniformSampler()
        self.spec: EpisodeSpec | None = None
        self.obs_fields: list[str] = []
        self.memory: RingStorage | None = None
        self._writer: RingWriter | None = None
        self._transforms: list[Transform] = []
        self.rows_by_robot: dict[str, int] = {}
        self.episodes: deque[dict[str, Any]] = deque(maxlen=1000)  # recent episode outcomes
        self.episodes_total = 0
        if self.store.manifest.spec is not None:
            self._adopt(EpisodeSpec.from_dict(self.store.manifest.spec))
            self._reload()

    # ------------------------------------------------------------ SampleSource

    @property
    def size(self) -> int:
        return self.memory.size if self.memory is not None else 0

    @property
    def added(self) -> int:
        return self.memory.added if self.memory is not None else 0

    @property
    def dims(self) -> Dims | None:
        if self._writer is None:
            return None
        return Dims(self._writer.obs_dim, self._writer.act_dim, tuple(self.obs_fields))

    @property
    def rows(self) -> int:
        return self.store.rows

    @property
    def segment_count(self) -> int:
        return len(self.store.manifest.segments)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """Uniform rows from memory, actions normalised to [-1, 1]."""
        if self.memory is None:
            raise ValueError("cannot sample before the run's spec is known")
        with self.memory.lock:  # one size for the draw and the rows it names
            batch = self.memory.get(self.sampler.indices(self.memory.size, batch_size, rng))
        for t in self._transforms:
            batch = t(batch)
        return batch

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

    def check_spec(self, spec: EpisodeSpec) -> None:
        """The first robot fixes the run's spec; later robots must match it."""
        if self.spec is None:
            self._adopt(spec)
            self.store.set_spec(spec.to_dict())
            log.info("event=run_spec_set fields=%s action_dim=%d", list(spec.observation), spec.action_dim)
        elif spec != self.spec:
            raise SchemaError(f"robot's episode spec differs from this run's spec: {spec_difference(self.spec, spec)}",
                              code="spec_mismatch")

    def _adopt(self, spec: EpisodeSpec) -> None:
        fields = self.requested_fields or spec.state_fields
        missing = [f for f in fields if f not in spec.state_fields]
        if missing:
            raise SchemaError(f"learner.observation_fields names fields robots do not record: {missing}")
        self.spec = spec
        self.obs_fields = list(fields)
        self._writer = RingWriter(spec, self.obs_fields)
        self.memory = RingStorage(self.memory_capacity, self._writer.columns())
        self._transforms = [NormaliseAction(spec)]

    def _reload(self) -> None:
        """Recovery: newest segments back into memory, until it is full."""
        assert self.memory is not None
        segments = self.store.manifest.segments
        need, tables = self.memory_capacity, []
        for seg in reversed(segments):
            if need <= 0:
                break
            tables.append(self.store.read_segment(seg.name))
            need -= seg.rows
        for t in reversed(tables):
            self._index(t)
        for seg in segments:
            for rid, (_, _, rows) in seg.robots.items():
                self.rows_by_robot[rid] = self.rows_by_robot.get(rid, 0) + rows
        log.info("event=buffer_recovered segments=%d rows=%d in_memory=%d", len(segments), self.rows, self.memory.size)

    def _index(self, table: pa.Table) -> None:
        assert self.memory is not None and self._writer is not None
        self._writer.write(self.memory, table)
        ends = table.filter(pc.or_(table.column("terminated"), table.column("truncated")))
        for rid, succ, ver in zip(
            ends.column("robot_id").to_pylist(), ends.column("success").to_pylist(), ends.column("policy_version").to_pylist()
        ):
            self.episodes.append({"robot_id": rid, "success": bool(succ), "policy_version": ver})
            self.episodes_total += 1

    def write(self, items: list[Item]) -> None:
        """Make chunks (and reported losses) durable as one sealed segment, then index them. Blocking."""
        packed = pack(items)
        self.store.write_segment(packed.table, packed.robots, packed.lost)
        for rid, (_, _, rows) in packed.robots.items():
            self.rows_by_robot[rid] = self.rows_by_robot.get(rid, 0) + rows
        if packed.table is not None:
            self._index(packed.table)

    def success_rate(self, last: int = 50) -> float | None:
        recent = list(self.episodes)[-last:]
        return sum(e["success"] for e in recent) / len(recent) if recent else None
