"""The durable outbox: append-only segment files of checksummed records.

A chunk counts as recorded once its record is in a segment (and fsynced, by
default). Records are deleted only after the cloud acked them as durable,
segment by segment. On open, a torn tail (power cut mid-write) is detected by
length and checksum and cut; every complete record before it is kept.

Record layout: ``len u32 | crc32 u32 | seq u64 | rows u32 | raw_size u64 |
body_crc u32 | episode_id_len u16 | episode_id | body``, crc over all after it.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from shared.fsutil import atomic_write, fsync_dir

log = logging.getLogger("fleetrl.spool")

_PREFIX = struct.Struct("<II")  # length of the rest, crc32 of the rest
_FIXED = struct.Struct("<QIQIH")
_SUFFIX = ".seg"
_ACKED = "acked"


@dataclass(frozen=True)
class SpoolRecord:
    seq: int
    episode_id: str
    rows: int
    raw_size: int
    body_crc: int
    body: bytes


@dataclass(frozen=True)
class _Loc:
    segment: Path
    offset: int
    length: int


class Spool:
    """Thread-safe: the encoder thread appends, the uplink reads and acks."""

    def __init__(self, directory: Path, fsync: bool = True, segment_bytes: int = 64 << 20):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._index: dict[int, _Loc] = {}
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), in order
        self.acked_seq = self._read_acked()
        self.last_seq = self.acked_seq
        self.bytes = 0
        self._active: Path | None = None
        self._fh = None
        self._recover()

    # ---------------------------------------------------------------- recovery

    def _read_acked(self) -> int:
        try:
            return int((self.dir / _ACKED).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _recover(self) -> None:
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink()
        for path in sorted(self.dir.glob(f"*{_SUFFIX}")):
            first = int(path.stem)
            good_end = self._scan(path)
            size = path.stat().st_size
            if good_end < size:
                log.warning("event=spool_torn_tail segment=%s kept_bytes=%d cut_bytes=%d", path.name, good_end, size - good_end)
                with open(path, "r+b") as fh:
                    fh.truncate(good_end)
                    os.fsync(fh.fileno())
            if good_end == 0:
                path.unlink()
                continue
            self._segments.append((first, path))
            self.bytes += good_end
        for seq in [s for s in self._index if s <= self.acked_seq]:
            del self._index[seq]
        if self._index:
            self.last_seq = max(self.last_seq, max(self._index))
        self._drop_acked_segments()

    def _scan(self, path: Path) -> int:
        """Index every complete record of a segment; return where the good data ends."""
        data = path.read_bytes()
        pos = 0
        while pos + _PREFIX.size <= len(data):
            length, crc = _PREFIX.unpack_from(data, pos)
            start = pos + _PREFIX.size
            rest = data[start : start + length]
            if length < _FIXED.size or len(rest) < length or zlib.crc32(rest) != crc:
                break
            seq = _FIXED.unpack_from(rest)[0]
            if seq <= self.last_seq and seq in self._index:
                break  # a sequence repeated means corruption; stop trusting this segment
            self._index[seq] = _Loc(path, pos, _PREFIX.size + length)
            self.last_seq = max(self.last_seq, seq)
            pos = start + length
        return pos

    # ---------------------------------------------------------------- writing

    def append(self, episode_id: str, rows: int, raw_size: int, body_crc: int, body: bytes) -> int:
        """Write one chunk durably and return its stream sequence."""
        eid = episode_id.encode()
        with self._lock:
            seq = self.last_seq + 1
            rest = _FIXED.pack(seq, rows, raw_size, body_crc, len(eid)) + eid + body
            record = _PREFIX.pack(len(rest), zlib.crc32(rest)) + rest
            fh = self._writer(len(record))
            offset = fh.tell()
            fh.write(record)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
            self._index[seq] = _Loc(self._active, offset, len(record))  # type: ignore[arg-type]
            self.last_seq = seq
            self.bytes += len(record)
            return seq

    def _writer(self, incoming: int):
        if self._fh is not None and self._fh.tell() + incoming > self.segment_bytes:
            self._fh.close()
            self._fh = None
        if self._fh is None:
            path = self.dir / f"{self.last_seq + 1:020d}{_SUFFIX}"
            self._fh = open(path, "ab")
            self._active = path
            self._segments.append((self.last_seq + 1, path))
            if self.fsync:
                fsync_dir(self.dir)
        return self._fh

    # ---------------------------------------------------------------- reading / acking

    def read(self, seq: int) -> SpoolRecord:
        with self._lock:
            loc = self._index[seq]
        with open(loc.segment, "rb") as fh:
            fh.seek(loc.offset)
            data = fh.read(loc.length)
        rest = data[_PREFIX.size :]
        seq_, rows, raw_size, body_crc, n = _FIXED.unpack_from(rest)
        eid = rest[_FIXED.size : _FIXED.size + n].decode()
        return SpoolRecord(seq_, eid, rows, raw_size, body_crc, rest[_FIXED.size + n :])

    def pending(self) -> int:
        return self.last_seq - self.acked_seq

    def ack(self, seq: int) -> None:
        """The cloud holds everything up to ``seq`` durably: forget it here."""
        with self._lock:
            if seq <= self.acked_seq:
                return
            seq = min(seq, self.last_seq)
            self.acked_seq = seq
            atomic_write(self.dir / _ACKED, str(seq).encode(), fsync=self.fsync)
            for s in [s for s in self._index if s <= seq]:
                del self._index[s]
            self._drop_acked_segments()

    def adopt_cloud_mark(self, cloud_acked: int) -> None:
        """The cloud knows more than this spool (e.g. a fresh disk): never reuse a sequence."""
        with self._lock:
            if cloud_acked > self.last_seq:
                self.last_seq = cloud_acked
                if self._fh is not None:
                    self._fh.close()
                    self._fh = None
        self.ack(cloud_acked)

    def _drop_acked_segments(self) -> None:
        keep = []
        for i, (first, path) in enumerate(self._segments):
            last_in = self._segments[i + 1][0] - 1 if i + 1 < len(self._segments) else self.last_seq
            if last_in <= self.acked_seq:
                if path == self._active and self._fh is not None:
                    self._fh.close()
                    self._fh = None
                self.bytes -= path.stat().st_size
                path.unlink()
            else:
                keep.append((first, path))
        self._segments = keep

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
