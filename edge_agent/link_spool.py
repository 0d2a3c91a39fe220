"""The link process's view of the spool: it reads and acks, the control process writes.

The control process owns the spool (recovery, appends, quota, the acked mark on
disk). This view indexes the same segment files read-only, learns of each new
record from the control process, reads records back for the uplink, and
forwards acks and lost records to the owner. It offers the methods
:class:`edge_agent.uplink.Uplink` uses on a :class:`edge_agent.spool.Spool`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from .spool import SpoolCorrupt
from .spool_format import SUFFIX, Loc, SpoolRecord, decode_record, parse_at, resync

log = logging.getLogger("fleetrl.link")


class SpoolView:
    """``notify(kind, payload)`` tells the control process (thread-safe: acks come from worker threads)."""

    def __init__(self, directory: Path, acked_seq: int, last_seq: int, lost: list[list],
                 notify: Callable[[str, Any], None]):
        self.dir = Path(directory)
        self.acked_seq, self.last_seq = acked_seq, last_seq
        self.lost = [list(r) for r in lost]
        self.notify = notify
        self.bytes = 0
        self.quota_bytes = 0
        self._pending_owner = last_seq - acked_seq
        self._lock = threading.Lock()
        self._index: dict[int, Loc] = {}  # in seq order (appends arrive in order)
        self._scan()

    def _scan(self) -> None:
        """Index the whole records the control process had written when it started this view.

        The owner recovered the spool first: it cut torn tails and quarantined damaged
        records (they are in ``lost``), so a record that fails its checksum here is skipped,
        as the owner's scan skips it, and the next good one found.
        """
        found: dict[int, Loc] = {}
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # acked and deleted meanwhile
                continue
            pos: int | None = 0
            while pos is not None and pos < len(data):
                rec = parse_at(data, pos)
                if rec is None:
                    pos = resync(data, pos + 1)
                    continue
                seq, length = rec
                if self.acked_seq < seq <= self.last_seq:
                    found[seq] = Loc(path, pos, length)
                pos += length
        self._index = dict(sorted(found.items()))

    # ---------------------------------------------------------------- from the control process

    def appended(self, seq: int, segment: str, offset: int, length: int) -> None:
        with self._lock:
            if seq > self.acked_seq:
                self._index[seq] = Loc(Path(segment), offset, length)
            self.last_seq = max(self.last_seq, seq)

    def owner_state(self, state: dict[str, Any]) -> None:
        """The owner's figures for logs and status: bytes, quota, lost ranges."""
        self.bytes, self.quota_bytes = state["bytes"], state["quota_bytes"]
        with self._lock:
            known = {(r[0], r[1]) for r in self.lost}
            self.lost += [list(r) for r in state["lost"] if (r[0], r[1]) not in known and r[1] > self.acked_seq]

    # ---------------------------------------------------------------- what the uplink calls

    def pending(self) -> int:
        return self.last_seq - self.acked_seq

    def lost_range(self, seq: int) -> tuple[int, int, str] | None:
        with self._lock:
            for first, last, reason in self.lost:
                if first <= seq <= last:
                    return first, last, reason
        return None

    def read(self, seq: int) -> SpoolRecord:
        with self._lock:
            loc = self._index.get(seq)
        if loc is None:
            if not (self.acked_seq < seq <= self.last_seq) or self.lost_range(seq) is not None:
                raise KeyError(seq)
            self._lose(seq, "spool record missing from disk")
            raise SpoolCorrupt(f"spool record {seq} is not on disk in {self.dir}")
        try:
            with open(loc.segment, "rb") as fh:
                fh.seek(loc.offset)
                data = fh.read(loc.length)
        except FileNotFoundError:
            data = b""
        if parse_at(data, 0) != (seq, loc.length):
            self._lose(seq, "spool record damaged on disk (found when read back)")
            raise SpoolCorrupt(f"spool record {seq} in {loc.segment} failed its checksum")
        return decode_record(data)

    def _lose(self, seq: int, reason: str) -> None:
        """Report the record as lost at once (the stream must not stall on it); the owner
        quarantines it and keeps the range on disk."""
        with self._lock:
            self.lost.append([seq, seq, reason])
            self._index.pop(seq, None)
        log.error("event=spool_record_unreadable seq=%d reason=%r", seq, reason)
        self.notify("lost", seq)

    def ack(self, seq: int) -> None:
        with self._lock:
            seq = min(seq, self.last_seq)
            if seq <= self.acked_seq:
                return
            self.acked_seq = seq
            self.lost = [r for r in self.lost if r[1] > seq]
            while self._index:
                first = next(iter(self._index))
                if first > seq:
                    break
                del self._index[first]
        self.notify("acked", seq)

    def adopt_cloud_mark(self, cloud_acked: int) -> None:
        with self._lock:
            if cloud_acked > self.last_seq:
                self.last_seq = cloud_acked
        self.notify("adopt", cloud_acked)
        self.ack(cloud_acked)
