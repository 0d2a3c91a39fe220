"""The demo ring: demonstration and intervention rows kept apart for RLPD, BC and HG-DAgger.

A second ``RingStorage`` of the online ring's columns holds the rows with
``demo`` or ``intervention`` set (HIL-SERL: an intervention goes to both
rings, a recorded demonstration to this one only, so RLPD's online half and
the update-to-data ratio count what the policy itself took part in). It has no storage of its own: the replay buffer feeds it from the
rows it indexes (live writes and the reload after a restart) and from
``learner.demo_paths`` (another run's data dir, or fleetrl Parquet segment
files), which are checked against the run's spec and loaded whole or not at
all. ``MixedSource`` is the ``SampleSource`` an algorithm samples through:
``demo_fraction`` of each batch (rounded) from this ring, the rest online.
State runs only: rows whose camera frames live in the ``FrameRing`` are not
kept here (the trainer refuses demo algorithms for camera runs).
For a chunked policy (``learner.policy = "flow"``) the ring's writer is a
``ChunkWriter``: each row also keeps its episode's next actions
(``action_chunk``, ``chunk_valid``), cut per table as it is added.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.chunk import upgrade
from shared.errors import ConfigError, SchemaError, StorageError
from shared.schema import EpisodeSpec

from .specs import spec_difference
from .memory import RingStorage
from .source import Batch, Dims, Relabel
from .storage import MANIFEST, Manifest, SegmentInfo, read_manifest
from .writer import RingWriter

log = logging.getLogger("fleetrl.demos")

FLAGS = ("demo", "intervention")


def human_rows(table: pa.Table) -> pa.Table:
    """The rows a person drove (a demonstration or an intervention)."""
    names = table.schema.names
    if not any(f in names for f in FLAGS):
        return table.slice(0, 0)
    mask = None
    for f in FLAGS:
        if f in names:
            mask = table.column(f) if mask is None else pc.or_(mask, table.column(f))
    return table.filter(mask)


def online_rows(table: pa.Table) -> pa.Table:
    """The rows the online ring keeps: all but recorded demonstrations (interventions stay: the policy was live)."""
    if "demo" not in table.schema.names or not pc.any(table.column("demo")).as_py():
        return table  # no demonstration rows (the usual case): no filtered copy of the whole table
    return table.filter(pc.invert(table.column("demo")))


class DemoRing:
    """Rows people drove, in a ring of ``capacity`` (the oldest go first); fed by the replay buffer."""

    def __init__(self, capacity: int, writer: RingWriter, relabel: Relabel | None = None):
        self.writer = writer
        self.relabel = relabel  # rows not yet scored (imports, reloads) are scored here, whole tables at a time
        self.storage = RingStorage(capacity, writer.columns(), writer.dtypes())

    @property
    def size(self) -> int:
        return self.storage.size

    @property
    def added(self) -> int:
        return self.storage.added

    def add(self, table: pa.Table, scored: bool = False) -> int:
        """Keep the table's demo and intervention rows; how many there were. ``scored``: the relabel has
        been applied already (the buffer's live path scores once for both rings)."""
        if self.relabel is not None and not scored and human_rows(table).num_rows:
            table = self.relabel(table, self.writer.spec)  # the whole table: next frames need whole chunks
        rows = human_rows(table)
        if rows.num_rows:
            self.writer.write(self.storage, rows)
        return rows.num_rows

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        with self.storage.lock:
            if self.storage.size <= 0:
                raise ValueError("cannot sample demonstrations: the demo ring is empty")
            return self.storage.get(rng.integers(0, self.storage.size, n))

    def reload(self, seg_dir: Path, segments: Sequence[SegmentInfo], read: Callable[[str], pa.Table]) -> int:
        """After a restart: the demo rows of ``segments`` (those memory did not reload), oldest first, as many as
        fit. Only the flag columns are read until a segment is known to hold such rows."""
        picked: list[str] = []
        found = 0
        for seg in reversed(segments):
            if found >= self.storage.capacity:
                break
            names = pq.read_schema(seg_dir / seg.name).names
            flags = pq.read_table(seg_dir / seg.name, columns=[c for c in FLAGS if c in names])
            n = human_rows(flags).num_rows
            if n:
                picked.append(seg.name)
                found += n
        for name in reversed(picked):
            self.add(read(name))
        return found

    def load_imports(self, paths: Sequence[Path], spec: EpisodeSpec) -> int:
        """``learner.demo_paths`` into the ring: every path checked and read first, nothing kept on an error."""
        tables: list[pa.Table] = []
        for p in paths:
            got = [human_rows(t) for t in _read_import(Path(p), spec)]
            n = sum(t.num_rows for t in got)
            if n == 0:
                raise ConfigError(f"learner.demo_paths: {p} holds no rows marked demo or intervention")
            tables += got
            log.info("event=demos_import_read path=%s rows=%d", p, n)
        total = 0
        for t in tables:
            total += self.add(t)
        if total > self.storage.capacity:
            log.warning("event=demos_import_truncated rows=%d demo_capacity=%d kept=newest", total,
                        self.storage.capacity)
        return total


def _run_manifest(path: Path) -> tuple[Path, Manifest, EpisodeSpec]:
    """A run dir's (or buffer dir's) buffer root, manifest and spec; ConfigError naming the path."""
    what = f"learner.demo_paths: {path}"
    root = path / "buffer" if (path / "buffer" / MANIFEST).is_file() else path
    try:
        manifest = read_manifest(root)
    except StorageError as e:
        raise ConfigError(f"{what}: {e}") from None
    if manifest is None:
        raise ConfigError(f"{what} is neither a run's data dir nor a buffer dir (no {MANIFEST} in it or in its buffer/)")
    if manifest.spec is None:
        raise ConfigError(f"{what} holds no data (its run never fixed a spec)")
    try:
        return root, manifest, EpisodeSpec.from_dict(manifest.spec).current()
    except SchemaError as e:
        raise ConfigError(f"{what}: {e}") from None


def demo_spec(path: Path) -> EpisodeSpec:
    """The spec a new run takes from its first ``demo_paths`` entry (a run dir, or a segment inside one)."""
    path = Path(path)
    if path.is_file():
        root = path.parent.parent
        if not (root / MANIFEST).is_file():
            raise ConfigError(f"learner.demo_paths: {path}: a new run (no robot linked yet) takes its spec from its "
                              "first demo path, and a lone Parquet file does not say it: name the run dir first")
        path = root
    elif not path.is_dir():
        raise ConfigError(f"learner.demo_paths: {path}: no such file or directory")
    return _run_manifest(path)[2]


def _read_import(path: Path, spec: EpisodeSpec) -> list[pa.Table]:
    """One ``demo_paths`` entry as tables in this run's layout; ConfigError naming the path and what differs."""
    what = f"learner.demo_paths: {path}"
    if path.is_dir():
        root, manifest, theirs = _run_manifest(path)
        _check_spec(what, spec, theirs)
        files = [root / "segments" / s.name for s in manifest.segments]
    elif path.is_file():
        if (path.parent.parent / MANIFEST).is_file():  # a segment of a run: its spec (action bounds too) must match
            _check_spec(what, spec, _run_manifest(path.parent.parent)[2])
        files = [path]
    else:
        raise ConfigError(f"{what}: no such file or directory")
    out = []
    for f in files:
        try:
            table = upgrade(pq.read_table(f))
        except (OSError, pa.ArrowException, SchemaError) as e:
            raise ConfigError(f"{what}: {f} is not a readable Parquet segment ({e})") from None
        _check_schema(f"{what}" if f == path else f"{what}: {f.name}", table.schema, spec)
        out.append(table)
    return out


def _check_spec(what: str, spec: EpisodeSpec, theirs: EpisodeSpec) -> None:
    if theirs != spec:
        raise ConfigError(f"{what} was recorded with another spec: {spec_difference(spec, theirs, 'the import')}")


def _check_schema(what: str, schema: pa.Schema, spec: EpisodeSpec) -> None:
    """Every column this run's rows have, with its type: the first that differs is named."""
    for field in spec.arrow_schema():
        if field.name not in schema.names:
            raise ConfigError(f"{what} does not fit this run's spec: it has no column {field.name!r}")
        theirs = schema.field(field.name).type
        if theirs != field.type:
            raise ConfigError(f"{what} does not fit this run's spec: column {field.name!r} is {theirs}, "
                              f"the run has {field.type}")


class DemoBuffer(Protocol):
    """What ``MixedSource`` needs of a buffer (the ``ReplayBuffer``)."""

    @property
    def size(self) -> int: ...
    @property
    def added(self) -> int: ...
    @property
    def dims(self) -> Dims | None: ...
    @property
    def rows(self) -> int: ...
    @property
    def segment_count(self) -> int: ...
    @property
    def demo_size(self) -> int: ...
    @property
    def demo_added(self) -> int: ...

    def sample(self, batch_size: int, rng: np.random.Generator, demo_fraction: float = 0.0) -> Batch: ...


class MixedSource:
    """A ``SampleSource`` drawing ``demo_fraction`` of each batch from the demo ring (1.0: demos only)."""

    def __init__(self, buffer: DemoBuffer, demo_fraction: float):
        if not 0.0 <= demo_fraction <= 1.0:
            raise ValueError(f"demo_fraction must be in [0, 1], got {demo_fraction}")
        self.buffer, self.demo_fraction = buffer, demo_fraction

    @property
    def size(self) -> int:
        return self.buffer.demo_size if self.demo_fraction >= 1.0 else self.buffer.size

    @property
    def added(self) -> int:
        return self.buffer.added

    @property
    def dims(self) -> Dims | None:
        return self.buffer.dims

    @property
    def rows(self) -> int:
        return self.buffer.rows

    @property
    def segment_count(self) -> int:
        return self.buffer.segment_count

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        return self.buffer.sample(batch_size, rng, demo_fraction=self.demo_fraction)
