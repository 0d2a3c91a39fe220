"""Sealed Parquet segments and the manifest that names them.

A segment is written under a temporary name, fsynced, renamed and the
directory fsynced; then one line naming it (and each robot's durable
high-water stream sequence) is appended to the manifest log and fsynced
(``manifest``: snapshot + log, compacted now and then). A crash between the two
leaves a stray segment that recovery reports and removes: its chunks were
never acked, so robots resend them, and nothing is stored twice.
"""

from __future__ import annotations

import logging
import os
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

from .manifest import LOG, MANIFEST, MANIFEST_VERSION, Manifest, ManifestLog, SegmentInfo, load, read_log, replay

__all__ = ["LOG", "MANIFEST", "MANIFEST_VERSION", "Manifest", "SegmentInfo", "SegmentStore", "read_manifest",
           "segment_path", "image_columns", "row_groups"]

log = logging.getLogger("fleetrl.storage")

COMPACT_MIN = 1024  # log records before a snapshot is considered (then: as many as the snapshot has segments)
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


def read_manifest(root: Path) -> Manifest | None:
    """The manifest as on disk (snapshot + log), or None where there is none; no recovery runs.

    For readers beside a live learner (export): opening a ``SegmentStore``
    would delete the learner's in-flight segment files as strays.
    """
    return load(Path(root))


def segment_path(root: Path, seg: SegmentInfo) -> Path:
    return Path(root) / SEGMENTS / seg.name


class SegmentStore:
    def __init__(self, root: Path, compression: str = "zstd"):
        self.root = Path(root)
        self.seg_dir = self.root / SEGMENTS
        self.seg_dir.mkdir(parents=True, exist_ok=True)
        self.compression = compression
        path, log_path = self.root / MANIFEST, self.root / LOG
        recs: list[dict[str, Any]] = []
        good = self._snapshot_segments = 0
        if path.exists():
            self.manifest = Manifest.from_json(path.read_bytes(), path)
            self._snapshot_segments = len(self.manifest.segments)
            recs, good = read_log(log_path)
            replay(self.manifest, recs, log_path)
        else:
            self.manifest = Manifest(run_id=os.urandom(8).hex(), robot_bytes={})
            log_path.unlink(missing_ok=True)  # a log without its snapshot names nothing this run wrote
            atomic_write(path, self.manifest.to_json())
        self.recovery_report = self._recover()  # before any write: a damaged buffer is left as it is
        self._log = ManifestLog(log_path, good)
        self._logged = len(recs)  # records in the log (a snapshot is due when they are many)
        if self.manifest.version < MANIFEST_VERSION:
            self.compact()  # an older build must refuse this buffer, not read the snapshot without the log
        self._account()

    @property
    def rows(self) -> int:
        return self.manifest.rows

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
        """A manifest from before per-robot accounting: charge its segments now (and write it down)."""
        if self.manifest.robot_bytes is None:
            self.manifest.robot_bytes = {}
            for seg in self.manifest.segments:
                self.manifest.charge(seg, (self.seg_dir / seg.name).stat().st_size)
            self.compact()

    def _commit(self, rec: dict[str, Any]) -> None:
        """Append one commit to the log (durable when this returns), then apply it in memory.

        Raises with memory unchanged when the append fails. A snapshot follows when the log holds as many
        records as the last snapshot has segments (at least ``COMPACT_MIN``): its cost, spread over those
        commits, keeps each commit's cost flat on average."""
        rec = {"n": self.manifest.commits + 1, **rec}
        self._log.append(rec)
        self.manifest.apply(rec)
        self._logged += 1
        if self._logged >= max(COMPACT_MIN, self._snapshot_segments):
            try:
                self.compact()
            except OSError as e:  # the commit is durable in the log; the snapshot waits for the next try
                log.warning("event=manifest_compaction_failed error=%r action=kept_the_log", e)

    def compact(self) -> None:
        """Write the state as a new snapshot (atomic replace), then empty the log."""
        atomic_write(self.root / MANIFEST, self.manifest.to_json())
        self._log.reset()
        self._logged, self._snapshot_segments = 0, len(self.manifest.segments)

    def close(self) -> None:
        self._log.close()

    def set_spec(self, spec: dict[str, Any]) -> None:
        self._commit({"op": "spec", "spec": spec})

    def set_extra(self, key: str, value: Any) -> None:
        self._commit({"op": "extra", "key": key, "value": value})

    def write_segment(
        self, table: pa.Table | None, robots: dict[str, list[int]], lost: list[dict[str, Any]] | None = None
    ) -> SegmentInfo | None:
        """Seal ``table`` as a new segment and advance the robots' marks, atomically.

        ``table`` may be None when only lost ranges move a mark.
        """
        m = self.manifest
        info, size = None, 0
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
            size = (self.seg_dir / name).stat().st_size
        # Not committed if this raises: memory stays as on disk; the renamed segment is a stray.
        self._commit({"op": "seg", "seg": None if info is None else info.to_dict(), "bytes": size,
                      "hwm": {rid: last for rid, (_, last, _) in robots.items()}, "lost": list(lost or []),
                      "next": m.next_segment + (info is not None)})
        return info

    def _write_parquet(self, table: pa.Table, path: Path) -> None:
        """State-only: one zstd table (dictionaries for string columns only). With cameras: frames uncompressed (raw bytes or PNG/JPEG already), in
        row groups of whole chunks (~``IMAGE_ROW_GROUP_ROWS``) that history sampling reads one at a time, one
        page per column chunk (so raw frames can be read in place: ``history``)."""
        images = image_columns(table.schema)
        # Dictionaries only where values repeat (robot and episode ids): on float columns one costs a third of
        # the write and makes the file bigger.
        strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        if not images:
            pq.write_table(table, path, compression=self.compression, use_dictionary=strings)
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
        # Frames are stored as they came: no compression (raw noise does not compress, PNG/JPEG already is),
        # no dictionary, no min/max statistics (nothing filters on pixels; they cost a pass over every byte).
        rest = [leaf for f in table.schema if f.name not in images for leaf in _leaves(f.name, f.type)]
        with pq.ParquetWriter(path, schema, compression=comp, data_page_size=IMAGE_PAGE_BYTES, **pages,
                              use_dictionary=strings,
                              write_statistics=rest) as w:
            for a, b in cuts:
                w.write_table(table.slice(a, b - a).replace_schema_metadata(schema.metadata), row_group_size=b - a)

    def read_segment(self, name: str, columns: list[str] | None = None) -> pa.Table:
        table = pq.read_table(self.seg_dir / name, columns=columns)
        return upgrade(table) if columns is None else table
