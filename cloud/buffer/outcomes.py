"""How the fleet's recent episodes went: success and return, for status, metrics and the dashboard.

Episodes arrive in chunks; a return is summed over every chunk of its
episode, so the sums of episodes still running are held until their last
row. Robots that vanish mid-episode would leave sums behind forever: the
oldest are dropped past a bound.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

MAX_OPEN = 10_000  # running episodes whose partial return is held


class EpisodeOutcomes:
    def __init__(self, keep: int = 1000):
        self.episodes: deque[dict[str, Any]] = deque(maxlen=keep)  # the newest episodes' outcomes
        self.total = 0
        self._open: dict[str, float] = {}  # episode id -> return so far

    def add(self, live: pa.Table) -> None:
        """Online rows (no demonstrations) as they are indexed, in the order they were recorded."""
        if live.num_rows == 0:
            return
        sums = live.group_by("episode_id", use_threads=False).aggregate([("reward", "sum")])
        for eid, r in zip(sums.column("episode_id").to_pylist(), sums.column("reward_sum").to_pylist()):
            self._open[eid] = self._open.pop(eid, 0.0) + float(r or 0.0)  # re-inserted: the newest last
        while len(self._open) > MAX_OPEN:
            del self._open[next(iter(self._open))]
        ends = pc.indices_nonzero(pc.or_(live.column("terminated"), live.column("truncated")))  # only the
        # episodes' last rows are read (no filtered copy of the whole table)
        for eid, rid, succ, ver in zip(live.column("episode_id").take(ends).to_pylist(),
                                       live.column("robot_id").take(ends).to_pylist(),
                                       live.column("success").take(ends).to_pylist(),
                                       live.column("policy_version").take(ends).to_pylist()):
            self.episodes.append({"robot_id": rid, "success": bool(succ), "policy_version": ver,
                                  "return": round(self._open.pop(eid, 0.0), 6)})
            self.total += 1

    def success_rate(self, last: int = 50) -> float | None:
        recent = list(self.episodes)[-last:]
        return sum(e["success"] for e in recent) / len(recent) if recent else None

    def mean_return(self, last: int = 50) -> float | None:
        recent = list(self.episodes)[-last:]
        return sum(e["return"] for e in recent) / len(recent) if recent else None
