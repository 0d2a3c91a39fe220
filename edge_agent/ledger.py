"""The agent's own count of what it recorded: the other side of every
exactly-once check.

Totals live in ``ledger.json``; ``chunks.log`` has one ``seq rows`` line per
spooled chunk, so the rows of a chunk later lost to disk damage are known.
A chunk is counted right after it is spooled and before the uplink may send
it; on start, any spooled chunk the ledger missed (a kill in between) is
counted from the spool itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write

from .spool import Spool, SpoolCorrupt

log = logging.getLogger("fleetrl.ledger")


class Ledger:
    def __init__(self, state_dir: Path, robot_id: str):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "ledger.json"
        self.data: dict[str, Any] = (
            json.loads(path.read_text()) if path.exists()
            else {"robot_id": robot_id, "transitions": 0, "chunks": 0, "episodes": 0, "successes": 0, "last_seq": 0}
        )
        self.data.setdefault("policy_versions_used", [])
        self._log = open(self.dir / "chunks.log", "a")

    @property
    def last_seq(self) -> int:
        return int(self.data["last_seq"])

    def record(self, seq: int, rows: int, episode_done: bool = False, success: bool = False) -> None:
        d = self.data
        d["transitions"] += rows
        d["chunks"] += 1
        d["episodes"] += int(episode_done)
        d["successes"] += int(episode_done and success)
        d["last_seq"] = seq
        try:  # the ledger is a record of the spool, never a reason to fail a spooled chunk
            self._log.write(f"{seq} {rows}\n")
            self._log.flush()
            self.save()
        except OSError as e:
            log.warning("event=ledger_write_failed seq=%d error=%r (reconciled from the spool at next start)", seq, e)

    def reconcile(self, spool: Spool) -> None:
        """Count chunks that reached the spool but not the ledger (killed in between)."""
        for seq in range(self.last_seq + 1, spool.last_seq + 1):
            if spool.lost_range(seq) is not None:
                continue
            try:
                rec = spool.read(seq)
            except (KeyError, SpoolCorrupt):
                continue
            log.warning("event=ledger_reconciled seq=%d rows=%d", seq, rec.rows)
            self.record(seq, rec.rows)

    def save(self, versions_used: list[int] | None = None) -> None:
        if versions_used is not None:
            seen = self.data["policy_versions_used"]
            self.data["policy_versions_used"] = seen + [v for v in versions_used if v not in seen]
        atomic_write(self.dir / "ledger.json", json.dumps(self.data).encode(), fsync=False)

    def close(self) -> None:
        try:  # closing flushes: on a full disk that fails, and must not stop a shutdown
            self._log.close()
        except OSError as e:
            log.warning("event=ledger_close_failed error=%r (reconciled from the spool at next start)", e)
