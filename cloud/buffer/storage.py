"""Sealed Parquet segments and the manifest that names them.

A segment is written under a temporary name, fsynced, renamed and the
directory fsynced; then the manifest (segments + each robot's durable
high-water stream sequence) is replaced atomically. A crash between the two
leaves a stray segment that recovery reports and removes: its chunks were
never acked, so robots resend them, and nothing is stored twice.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.chunk import upgrade
from shared.errors import StorageError
from shared.faults import crash_point
from shared.fsutil import atomic_write, fsync_dir

log = logging.getLogger("fleetrl.storage")

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SEGMENTS = "segments"  # the sealed segments' directory under the buffer root
IMAGE_ROW_GROUP_ROWS = 64  # a segment with cameras is cut into row groups of whole chunks of about this many rows
IMAGE_PAGE_BYTES = 1 << 30  # one data page per column chunk: raw frames then lie at a known place in the file
ONE_PAGE_KEY = b"fleetrl.camera_pages"  # file metadata: b"one" when every camera column chunk is a single page
# Older pyarrow cannot lift its rows-per-page cut: its files say nothing, and history decodes their frames.
ROWS_PER_PAGE_OPTION = "max_rows_per_page" in (pq.ParquetWriter.__doc__ or "")


def image_columns(schema: pa.Schema) -> set[str]:
    """Camera columns (binary: raw frames or PNG/JPEG)."""
    return {f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_fixed_size_binary(f.type)}


def _leaves(path: str, typ: pa.DataType) -> list[str]:
    """Parquet leaf column paths of an Arrow field (what per-column writer options are keyed by)."""
    if pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ) or pa.types.is_large_list(typ):
        return _leaves(path + ".list.element", typ.value_type)
    if pa.types.is_struct(typ):
        return [leaf for f in typ for leaf in _leaves(f"{path}.{f.name}", f.type)]
    return [path]


def row_groups(table: pa.Table, target: int) -> list[tuple[int, int]]:
    """[start, end) row ranges of whole chunks (a chunk: one robot's stream seq), at most ``target`` rows each
    unless one chunk is longer.

    A range never ends inside a chunk: a row's next frame is the following row's frame, so a row
    group must hold its chunk's last row. Tables without ``stream_seq`` are one range.
    """
    n = table.num_rows
    if "stream_seq" not in table.schema.names or n == 0:
        return [(0, n)]
    changed = np.zeros(n - 1, bool)
    for name in ("stream_seq", "robot_id"):
        col = table.column(name)
        changed |= pc.not_equal(col.slice(0, n - 1), col.slice(1)).to_numpy(zero_copy_only=False)
    out, start, prev = [], 0, 0
    for e in [*(np.flatnonzero(changed) + 1).tolist(), n]:  # chunk ends
        if e - start > target and prev > start:  # this chunk would overfill the group: close it before
            out.append((start, prev))
            start = prev
        prev = e
    out.append((start, n))
    return out


@dataclass
class SegmentInfo:
    name: str
    rows: int
    robots: dict[str, list[int]]  # robot id -> [first seq, last seq, rows]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "robots": self.robots}


@dataclass
class Manifest:
    run_id: str
    spec: dict[str, Any] | None = None
    segments: list[SegmentInfo] = field(default_factory=list)
    hwm: dict[str, int] = field(default_factory=dict)  # robot id -> highest durable stream seq
    lost: list[dict[str, Any]] = field(default_factory=list)  # ranges robots reported damaged
    next_segment: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    robot_bytes: dict[str, int] | None = None  # robot id -> disk bytes of its rows (segment size, shared by rows)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": MANIFEST_VERSION, "run_id": self.run_id, "spec": self.spec,
                "segments": [s.to_dict() for s in self.segments], "hwm": self.hwm, "lost": self.lost,
                "next_segment": self.next_segment, "extra": self.extra, "robot_bytes": self.robot_bytes,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path | str = MANIFEST) -> "Manifest":
        """Parse a manifest; StorageError naming ``path`` if it is damaged or of another version."""
        try:
            return cls._parse(json.loads(data))
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON, UTF-8, missing or mistyped fields
            why = (str(e).splitlines() or [""])[0][:200]
            raise StorageError(f"buffer manifest {path} is damaged or not one this build reads "
                               f"({type(e).__name__}: {why}); the buffer was left as it is") from None

    @classmethod
    def _parse(cls, d: Any) -> "Manifest":
        if d.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {d.get('version')!r}")
        return cls(
            run_id=d["run_id"], spec=d.get("spec"),
            segments=[SegmentInfo(s["name"], s["rows"], s["robots"]) for s in d["segments"]],
            hwm={k: int(v) for k, v in d["hwm"].items()}, lost=list(d.get("lost", [])),
            next_segment=int(d["next_segment"]),
            extra=d.get("extra", {}),
            robot_bytes=None if d.get("robot_bytes") is None else {k: int(v) for k, v in d["robot_bytes"].items()},
        )


def read_manifest(root: Path) -> Manifest | None:
    """The manifest as on disk, or None where there is none; no recovery runs.

    For readers beside a live learner (export): opening a ``SegmentStore``
    would delete the learner's in-flight segment files as strays.
    """
    path = Path(root) / MANIFEST
    return Manifest.from_json(path.read_bytes(), path) if path.is_file() else None


def segment_path(root: Path, seg: SegmentInfo) -> Path:
    return Path(root) / SEGMENTS / seg.name


class SegmentStore:
    def __init__(self, root: Path, compression: str = "zstd"):
        self.root = Path(root)
        self.seg_dir = self.root / SEGMENTS
        self.seg_dir.mkdir(parents=True, exist_ok=True)
        self.compression = compression
        path = self.root / MANIFEST
        if path.exists():
            self.manifest = Manifest.from_json(path.read_bytes(), path)
        else:
            self.manifest = Manifest(run_id=os.urandom(8).hex(), robot_bytes={})
            self._commit()
        self.recovery_report = self._recover()
        self._account()

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.manifest.segments)

    def _recover(self) -> dict[str, Any]:
        known = {s.name for s in self.manifest.segments}
        stray = []
        for p in sorted(self.seg_dir.iterdir()):
            if p.name not in known:
                stray.append(p.name)
                p.unlink()  # never acked: its robots still hold the data
        for s in self.manifest.segments:
            seg = self.seg_dir / s.name
            try:
                md = pq.read_metadata(seg)  # raises if the footer is bad
            except (OSError, pa.ArrowException) as e:
                raise StorageError(f"buffer segment {seg} named in {self.root / MANIFEST} cannot be read "
                                   f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})") from None
            if md.num_rows != s.rows:
                raise StorageError(f"buffer segment {seg} has {md.num_rows} rows, {self.root / MANIFEST} says {s.rows}")
        if stray:
            log.warning("event=stray_segments_removed count=%d names=%s", len(stray), ",".join(stray[:10]))
            fsync_dir(self.seg_dir)
        return {"segments": len(self.manifest.segments), "rows": self.rows, "stray_removed": stray}

    def _account(self) -> None:
        """A manifest from before per-robot accounting: charge its segments now."""
        if self.manifest.robot_bytes is None:
            self.manifest.robot_bytes = {}
            for seg in self.manifest.segments:
                self._charge(seg, (self.seg_dir / seg.name).stat().st_size)

    def _charge(self, seg: SegmentInfo, size: int) -> None:
        """Add a segment's disk bytes to its robots, shared by their rows (what the disk quota counts)."""
        assert self.manifest.robot_bytes is not None
        for rid, (_, _, rows) in seg.robots.items():
            share = size * rows // max(seg.rows, 1)
            self.manifest.robot_bytes[rid] = self.manifest.robot_bytes.get(rid, 0) + share

    def _commit(self) -> None:
        atomic_write(self.root / MANIFEST, self.manifest.to_json())

    def set_spec(self, spec: dict[str, Any]) -> None:
        self.manifest.spec = spec
        self._commit()

    def set_extra(self, key: str, value: Any) -> None:
        self.manifest.extra[key] = value
        self._commit()

    def write_segment(
        self, table: pa.Table | None, robots: dict[str, list[int]], lost: list[dict[str, Any]] | None = None
    ) -> SegmentInfo | None:
        """Seal ``table`` as a new segment and advance the robots' marks, atomically.

        ``table`` may be None when only lost ranges move a mark.
        """
        m = self.manifest
        info = None
        if table is not None and table.num_rows:
            name = f"seg-{m.next_segment:08d}.parquet"
            tmp = self.seg_dir / (name + ".tmp")
            self._write_parquet(table, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.seg_dir / name)
            fsync_dir(self.seg_dir)
            crash_point("seal_before_manifest")
            info = SegmentInfo(name, table.num_rows, {r: v for r, v in robots.items() if v[2]})
            m.segments.append(info)
            m.next_segment += 1
            self._charge(info, (self.seg_dir / name).stat().st_size)
        for rid, (_, last, _) in robots.items():
            m.hwm[rid] = max(m.hwm.get(rid, 0), last)
        m.lost.extend(lost or [])
        try:
            self._commit()
        except BaseException:
            # Not committed: go back to what is on disk; the renamed segment is a stray.
            self.manifest = Manifest.from_json((self.root / MANIFEST).read_bytes())
            self._account()
            raise
        return info

    def _write_parquet(self, table: pa.Table, path: Path) -> None:
        """State-only: one zstd table. With cameras: frames uncompressed (raw bytes or PNG/JPEG already), in
        row groups of whole chunks (~``IMAGE_ROW_GROUP_ROWS``) that history sampling reads one at a time, one
        page per column chunk (so raw frames can be read in place: ``history``)."""
        images = image_columns(table.schema)
        if not images:
            pq.write_table(table, path, compression=self.compression)
            return
        comp = {leaf: ("none" if f.name in images else self.compression)
                for f in table.schema for leaf in _leaves(f.name, f.type)}
        cuts = row_groups(table, IMAGE_ROW_GROUP_ROWS)
        longest = max(b - a for a, b in cuts)
        # Parquet writers also cut pages by rows (pyarrow: every 20,000); say so in the file only when each
        # camera column chunk is certainly one page, which is what reading frames in place relies on.
        widest = max((table.schema.field(n).type.byte_width for n in images
                      if pa.types.is_fixed_size_binary(table.schema.field(n).type)), default=0)
        schema, pages = table.schema, {}
        if longest * widest < IMAGE_PAGE_BYTES and ROWS_PER_PAGE_OPTION:
            schema = schema.with_metadata({**(schema.metadata or {}), ONE_PAGE_KEY: b"one"})
            pages = {"max_rows_per_page": max(longest, 1)}
        with pq.ParquetWriter(path, schema, compression=comp, data_page_size=IMAGE_PAGE_BYTES, **pages,
                              use_dictionary=[n for n in table.schema.names if n not in images]) as w:
            for a, b in cuts:
                w.write_table(table.slice(a, b - a).replace_schema_metadata(schema.metadata), row_group_size=b - a)

    def read_segment(self, name: str, columns: list[str] | None = None) -> pa.Table:
        table = pq.read_table(self.seg_dir / name, columns=columns)
        return upgrade(table) if columns is None else table
