"""The durable outbox: append-only segment files of checksummed records.

A chunk counts as recorded once its record is in a segment (fsynced, by
default). Records are deleted only after the cloud acked them as durable,
segment by segment. On open, a torn tail (power cut mid-write) is detected by
length and checksum and cut; every complete record before it is kept. A
damaged record in the middle is moved to ``quarantine/``, its sequence
numbers are reported as lost (so the cloud learns of it), and the records
after it are kept.

The record layout is in ``spool_format.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from typing import BinaryIO
from pathlib import Path

from shared.errors import StorageError
from shared.fsutil import atomic_write, fsync_dir

from .spool_format import SUFFIX, Loc, SpoolRecord, complete_but_damaged, decode_record, encode_record, parse_at, resync
from .state_slots import StateSlots

log = logging.getLogger("fleetrl.spool")

DEFAULT_QUOTA_SHARE = 0.5  # of the disk free at start (plus what the spool holds), when spool.quota_mb is unset
# The acked mark goes to disk at most this often, or after this many acks: rewriting and fsyncing the state
# file on every ack was most of the agent's time at full upload speed. A mark on disk behind the real one only
# causes resends the cloud drops (its welcome carries its durable mark: ``adopt_cloud_mark``).
ACK_PERSIST_S = 0.1
ACK_PERSIST_EVERY = 100


class SpoolCorrupt(StorageError):
    """A record failed its checksum when read back (it has been quarantined), or is missing;
    either way its sequence is now a lost range the cloud is told about."""

    code = "spool_corrupt"


class Spool:
    """Thread-safe: the encoder thread appends, the uplink reads and acks."""

    def __init__(
        self, directory: Path, fsync: str = "always", fsync_interval_ms: int = 100,
        segment_bytes: int = 64 << 20, quota_bytes: int | None = 0,
    ):
        """``quota_bytes``: 0 for none; None for the default, a share of the disk
        (a robot the learner refuses must not record until its disk is full)."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir = self.dir / "quarantine"
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"spool fsync policy {fsync!r}: use always, interval or never")
        self.fsync_policy, self.fsync_interval = fsync, fsync_interval_ms / 1000
        self.segment_bytes = segment_bytes
        self.quota_bytes: int = 0 if quota_bytes is None else quota_bytes  # None: set below, once the spool is read
        self._lock = threading.Lock()
        self._index: dict[int, Loc] = {}
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), in order
        self._active: Path | None = None
        self._fh: BinaryIO | None = None
        self._last_sync = 0.0
        self.bytes = 0
        self._state = StateSlots(self.dir / "state", fsync=fsync != "never")
        state = self._state.read()
        self.acked_seq: int = state.get("acked", 0)  # exact, in memory
        self._saved_acked = self.acked_seq  # what the state file says: segments are deleted up to here only
        self._unsaved_acks = 0
        self._last_save = 0.0
        self._timer: threading.Timer | None = None  # a pending write of the acked mark
        # [first, last, reason] ranges the cloud must hear of; their own file, so the
        # fixed-size state slot never has to make room by forgetting one.
        self.lost: list[list] = [r for r in self._read_lost() if r[1] > self.acked_seq]
        self.last_seq = max([self.acked_seq, state.get("last", 0)] + [r[1] for r in self.lost])
        self.quarantined = 0
        self._recover()
        if quota_bytes is None:
            free = shutil.disk_usage(self.dir).free
            self.quota_bytes = int((free + self.bytes) * DEFAULT_QUOTA_SHARE)
            log.info("event=spool_quota quota_bytes=%d source=default (%.0f%% of the free disk; set spool.quota_mb to change)",
                     self.quota_bytes, DEFAULT_QUOTA_SHARE * 100)

    # ---------------------------------------------------------------- state file

    def _write_state(self) -> None:
        acked = self.acked_seq
        self._state.write({"acked": acked, "last": self.last_seq})
        self._saved_acked, self._unsaved_acks, self._last_save = acked, 0, time.monotonic()

    def _read_lost(self) -> list[list]:
        path = self.dir / "lost.json"
        return json.loads(path.read_text()) if path.exists() else []

    def _write_lost(self) -> None:
        """Rare (a quarantine, or an ack past a lost range). A stale file on a full disk
        is harmless: ranges at or below the acked mark are dropped when it is read."""
        try:
            atomic_write(self.dir / "lost.json", json.dumps(self.lost).encode(), fsync=self.fsync_policy != "never")
        except OSError as e:
            log.warning("event=spool_lost_list_write_failed error=%r", e)

    # ---------------------------------------------------------------- recovery

    def _recover(self) -> None:
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink()
        prev_last = self.last_seq
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            keep_end = self._scan(path)
            size = path.stat().st_size
            if keep_end < size:
                log.warning("event=spool_torn_tail segment=%s kept_bytes=%d cut_bytes=%d", path.name, keep_end, size - keep_end)
                with open(path, "r+b") as fh:
                    fh.truncate(keep_end)
                    os.fsync(fh.fileno())
            if keep_end == 0:
                path.unlink()
                continue
            self._segments.append((int(path.stem), path))
            self.bytes += keep_end
        for seq in [s for s in self._index if s <= self.acked_seq]:
            del self._index[seq]
        if self._index:
            self.last_seq = max(self.last_seq, max(self._index))
        if self.last_seq != prev_last or self.lost:
            self._write_state()
            self._write_lost()
        self._drop_acked_segments()

    def _scan(self, path: Path) -> int:
        """Index the good records of a segment; quarantine damaged ones in the middle.

        Returns where the data worth keeping ends (a torn tail is cut there).
        """
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            rec = parse_at(data, pos)
            if rec is not None:
                seq, length = rec
                self._index[seq] = Loc(path, pos, length)
                pos += length
                continue
            nxt = resync(data, pos + 1)
            if nxt is None:
                if complete_but_damaged(data, pos):
                    # A whole record that fails its checksum is damage, not a torn
                    # write: it may have been sent, so its seq must not be reused.
                    self._quarantine(path, data[pos:], pos, len(data), data)
                return pos  # cut here: a torn tail, or a quarantined last record
            self._quarantine(path, data[pos:nxt], pos, nxt, data)
            pos = nxt
        return pos

    def _quarantine(self, path: Path, bad: bytes, pos: int, nxt: int, data: bytes) -> None:
        before = max((s for s, loc in self._index.items() if loc.segment == path and loc.offset < pos), default=int(path.stem) - 1)
        after = parse_at(data, nxt)[0] if nxt < len(data) else before + 2  # type: ignore[index]
        first, last = before + 1, after - 1
        if any(r[0] == first and r[1] == last for r in self.lost) or last <= self.acked_seq:
            return  # already quarantined and reported at an earlier start
        self.quarantine_dir.mkdir(exist_ok=True)
        (self.quarantine_dir / f"{path.stem}-{pos}.bad").write_bytes(bad)
        self.quarantined += 1
        if first <= last:
            self.lost.append([first, last, f"spool record damaged on disk ({len(bad)} bytes quarantined)"])
            self.last_seq = max(self.last_seq, last)
        log.error("event=spool_record_quarantined segment=%s offset=%d bytes=%d lost_seqs=%d-%d",
                  path.name, pos, len(bad), first, last)

    # ---------------------------------------------------------------- writing

    @property
    def full(self) -> bool:
        return self.quota_bytes > 0 and self.bytes >= self.quota_bytes

    def append(self, episode_id: str, rows: int, raw_size: int, body_crc: int, body: bytes) -> int:
        """Write one chunk durably and return its stream sequence. Raises OSError (e.g. disk full)."""
        with self._lock:
            seq = self.last_seq + 1
            record = encode_record(seq, episode_id, rows, raw_size, body_crc, body)
            fh = self._writer(len(record), seq)
            offset = fh.tell()
            try:
                view = memoryview(record)
                while view:  # unbuffered: a short write is retried, a failed one raises
                    view = view[fh.write(view) :]
                self._sync(fh)
            except OSError:
                os.ftruncate(fh.fileno(), offset)  # shrinking needs no space: no partial record stays
                fh.seek(offset)
                raise
            self._index[seq] = Loc(self._active, offset, len(record))  # type: ignore[arg-type]
            self.last_seq = seq
            self.bytes += len(record)
            return seq

    def _sync(self, fh) -> None:
        now = time.monotonic()
        if self.fsync_policy == "always" or (self.fsync_policy == "interval" and now - self._last_sync >= self.fsync_interval):
            os.fsync(fh.fileno())
            self._last_sync = now

    def _writer(self, incoming: int, seq: int):
        if self._fh is not None and self._fh.tell() + incoming > self.segment_bytes:
            self._close_active()
        if self._fh is None:
            path = self.dir / f"{seq:020d}{SUFFIX}"
            self._fh = open(path, "ab", buffering=0)
            self._active = path
            self._segments.append((seq, path))
            if self.fsync_policy != "never":
                fsync_dir(self.dir)
        return self._fh

    def _close_active(self) -> None:
        if self._fh is not None:
            if self.fsync_policy != "never":
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    # ---------------------------------------------------------------- reading / acking

    def lost_range(self, seq: int) -> tuple[int, int, str] | None:
        for first, last, reason in self.lost:
            if first <= seq <= last:
                return first, last, reason
        return None

    def read(self, seq: int) -> SpoolRecord:
        """Read a record back, verifying its checksum; a bad one is quarantined (SpoolCorrupt).

        A sequence that should be here but is not (its file lost outside our
        control) is reported as lost the same way, so the stream never stalls on it.
        """
        with self._lock:
            loc = self._index.get(seq)
            if loc is None:
                if not (self.acked_seq < seq <= self.last_seq) or self.lost_range(seq) is not None:
                    raise KeyError(seq)  # acked, already reported lost, or never written
                self.lost.append([seq, seq, "spool record missing from disk"])
                self._write_lost()
                log.error("event=spool_record_missing lost_seqs=%d-%d", seq, seq)
                raise SpoolCorrupt(f"spool record {seq} is not on disk in {self.dir}")
        with open(loc.segment, "rb") as fh:
            fh.seek(loc.offset)
            data = fh.read(loc.length)
        if parse_at(data, 0) != (seq, loc.length):
            with self._lock:
                self.quarantine_dir.mkdir(exist_ok=True)
                (self.quarantine_dir / f"{loc.segment.stem}-{loc.offset}.bad").write_bytes(data)
                self.quarantined += 1
                del self._index[seq]
                self.lost.append([seq, seq, "spool record damaged on disk (found when read back)"])
                self._write_lost()
            log.error("event=spool_record_quarantined segment=%s offset=%d lost_seqs=%d-%d", loc.segment.name, loc.offset, seq, seq)
            raise SpoolCorrupt(f"spool record {seq} in {loc.segment} failed its checksum (moved to quarantine/)")
        return decode_record(data)

    def pending(self) -> int:
        return self.last_seq - self.acked_seq

    def ack(self, seq: int) -> None:
        """The cloud holds everything up to ``seq`` durably: forget it here.

        The mark is exact in memory at once; it reaches disk at most every ``ACK_PERSIST_S`` or
        ``ACK_PERSIST_EVERY`` acks (a timer writes the last of a burst; :meth:`sync_acks`, :meth:`close`), and
        at once while the spool is over its quota (the caller checks ``full`` right after). Files are deleted
        only up to the mark on disk, so after a crash every record above it is still there to resend."""
        with self._lock:
            seq = min(seq, self.last_seq)
            if seq <= self.acked_seq:
                return
            self.acked_seq = seq
            still_lost = [r for r in self.lost if r[1] > seq]
            if still_lost != self.lost:
                self.lost = still_lost
                self._write_lost()
            index = self._index
            while index:  # seq order (appends arrive in order): drop from the front
                first = next(iter(index))
                if first > seq:
                    break
                del index[first]
            self._unsaved_acks += 1
            wait = ACK_PERSIST_S - (time.monotonic() - self._last_save)
            if self._unsaved_acks >= ACK_PERSIST_EVERY or wait <= 0 or self.full:  # full: free its files now
                self._save_acks()
            elif self._timer is None:  # the last acks of a burst reach disk (and free files) within ACK_PERSIST_S
                self._timer = threading.Timer(wait, self._timed_save)
                self._timer.daemon = True
                self._timer.start()

    def _timed_save(self) -> None:
        with self._lock:
            self._timer = None
            try:
                self._save_acks()
            except OSError as e:  # the next ack or close() tries again; the mark in memory is exact
                log.warning("event=spool_ack_write_failed error=%r", e)

    def sync_acks(self) -> None:
        """Write the acked mark now if the file is behind it (and delete the files it frees)."""
        with self._lock:
            self._save_acks()

    def _save_acks(self) -> None:
        if self._saved_acked != self.acked_seq:
            self._write_state()
            self._drop_acked_segments()

    def adopt_cloud_mark(self, cloud_acked: int) -> None:
        """The cloud knows more than this spool (e.g. a fresh disk): never reuse a sequence."""
        with self._lock:
            if cloud_acked > self.last_seq:
                log.warning("event=spool_behind_cloud local_last=%d cloud_acked=%d", self.last_seq, cloud_acked)
                self.last_seq = cloud_acked
                self._close_active()
        self.ack(cloud_acked)
        self.sync_acks()  # once per connection; a raised last seq must reach disk (never reuse one)

    def _drop_acked_segments(self) -> None:
        keep = []
        for i, (first, path) in enumerate(self._segments):
            last_in = self._segments[i + 1][0] - 1 if i + 1 < len(self._segments) else self.last_seq
            if last_in <= self._saved_acked:
                if path == self._active:
                    self._close_active()
                self.bytes -= path.stat().st_size
                path.unlink()
            else:
                keep.append((first, path))
        self._segments = keep

    def close(self) -> None:
        """The latest acked mark to disk, then the active segment closed."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._save_acks()
            self._close_active()

    def location(self, seq: int) -> tuple[str, int, int]:
        """(segment path, offset, length) of a pending record: the link process reads it from there."""
        with self._lock:
            loc = self._index[seq]
        return str(loc.segment), loc.offset, loc.length
