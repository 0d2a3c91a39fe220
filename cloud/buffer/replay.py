"""The replay buffer: durable Parquet storage composed with an in-memory sampler.

Like TorchRL's buffers, storage (where rows live) and memory/sampling (how
batches are drawn) are separate parts; the buffer only wires them.
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
from shared.protocol import Lost
from shared.schema import EpisodeSpec

from .memory import MemoryStore
from .storage import SegmentStore

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
    def __init__(self, root: Path, memory_capacity: int, obs_fields: list[str] | None = None):
        self.store = SegmentStore(root)
        self.memory_capacity = memory_capacity
        self.requested_fields = obs_fields
        self.spec: EpisodeSpec | None = None
        self.memory: MemoryStore | None = None
        self.rows_by_robot: dict[str, int] = {}
        self.episodes: deque[dict[str, Any]] = deque(maxlen=1000)  # recent episode outcomes
        self.episodes_total = 0
        if self.store.manifest.spec is not None:
            self._adopt(EpisodeSpec.from_dict(self.store.manifest.spec))
            self._reload()

    @property
    def run_id(self) -> str:
        return self.store.manifest.run_id

    @property
    def rows(self) -> int:
        return self.store.rows

    def hwm(self, robot_id: str) -> int:
        return self.store.manifest.hwm.get(robot_id, 0)

    def robot_bytes(self, robot_id: str) -> int:
        """Disk bytes of this robot's stored rows (its share of each segment)."""
        return (self.store.manifest.robot_bytes or {}).get(robot_id, 0)

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
        self.obs_fields = fields
        self.memory = MemoryStore(spec, fields, self.memory_capacity)

    def _reload(self) -> None:
        """Recovery: newest segments back into memory, until it is full."""
        assert self.memory is not None
        need, tables = self.memory_capacity, []
        for seg in reversed(self.store.manifest.segments):
            if need <= 0:
                break
            tables.append(self.store.read_segment(seg.name))
            need -= seg.rows
        for t in reversed(tables):
            self._index(t)
        for seg in self.store.manifest.segments:
            for rid, (_, _, rows) in seg.robots.items():
                self.rows_by_robot[rid] = self.rows_by_robot.get(rid, 0) + rows
        log.info("event=buffer_recovered segments=%d rows=%d in_memory=%d", len(self.store.manifest.segments), self.rows, self.memory.size)

    def _index(self, table: pa.Table) -> None:
        assert self.memory is not None
        self.memory.add(table)
        ends = table.filter(pc.or_(table.column("terminated"), table.column("truncated")))
        for rid, succ, ver in zip(
            ends.column("robot_id").to_pylist(), ends.column("success").to_pylist(), ends.column("policy_version").to_pylist()
        ):
            self.episodes.append({"robot_id": rid, "success": bool(succ), "policy_version": ver})
            self.episodes_total += 1

    def write(self, items: list[tuple[str, int, pa.RecordBatch | Lost]]) -> None:
        """Make chunks (and reported losses) durable as one sealed segment, then index them. Blocking."""
        tables: list[pa.Table] = []
        robots: dict[str, list[int]] = {}
        lost: list[dict[str, Any]] = []
        for rid, seq, item in items:
            if isinstance(item, Lost):
                first, last, rows = robots.get(rid, [item.first, item.last, 0])
                robots[rid] = [min(first, item.first), max(last, item.last), rows]
                lost.append({"robot_id": rid, "first": item.first, "last": item.last, "reason": item.reason})
                continue
            t = pa.Table.from_batches([item]).append_column("stream_seq", pa.array([seq] * item.num_rows, pa.uint64()))
            tables.append(t)
            first, last, rows = robots.get(rid, [seq, seq, 0])
            robots[rid] = [min(first, seq), max(last, seq), rows + item.num_rows]
        table = pa.concat_tables(tables) if tables else None
        self.store.write_segment(table, robots, lost)
        for rid, (_, _, rows) in robots.items():
            self.rows_by_robot[rid] = self.rows_by_robot.get(rid, 0) + rows
        if table is not None:
            self._index(table)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        assert self.memory is not None
        return self.memory.sample(batch_size, rng)

    def success_rate(self, last: int = 50) -> float | None:
        recent = list(self.episodes)[-last:]
        return sum(e["success"] for e in recent) / len(recent) if recent else None
