"""Per-robot quotas on what a robot makes the learner keep.

A robot (or a stolen credential) that streams within every message limit can
still fill the disk, or grow the manifest without end: every sealed segment
and every reported loss is a manifest entry, rewritten on each commit. Each
quota refuses the next chunk (``quota_exceeded``) before anything is stored:
the robot keeps its data in its spool and retries with backoff, as after a
``hold``. Defaults are far above what a real robot does.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from shared.errors import FleetError
from shared.protocol import Lost

WINDOW_S = 60.0


class QuotaError(FleetError):
    code = "quota_exceeded"


@dataclass
class Quotas:
    disk_bytes: int = 0  # 0: no quota
    segments_per_min: int = 0
    loss_reports_per_min: int = 0
    _segments: dict[str, deque[float]] = field(default_factory=dict)
    _losses: dict[str, deque[float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, limits: Any) -> "Quotas":
        """From a ``LimitsConfig`` (the ``[limits]`` table)."""
        return cls(limits.robot_disk_bytes, limits.robot_segments_per_min, limits.robot_loss_reports_per_min)

    @staticmethod
    def _recent(events: dict[str, deque[float]], robot_id: str, now: float) -> deque[float]:
        q = events.setdefault(robot_id, deque())
        while q and q[0] <= now - WINDOW_S:
            q.popleft()
        return q

    def check(self, robot_id: str, msg: Any, stored_bytes: int) -> None:
        """Refuse ``msg`` (a Chunk or a Lost report) if it would pass a quota; count a loss report that passes."""
        now = time.monotonic()
        if isinstance(msg, Lost):
            if self.loss_reports_per_min:
                q = self._recent(self._losses, robot_id, now)
                if len(q) >= self.loss_reports_per_min:
                    raise QuotaError(
                        f"robot {robot_id!r} reported {len(q)} lost ranges in the last minute "
                        f"(limits.robot_loss_reports_per_min = {self.loss_reports_per_min}); it keeps them and retries")
                q.append(now)
            return
        if self.disk_bytes and stored_bytes >= self.disk_bytes:
            raise QuotaError(
                f"robot {robot_id!r} stores {stored_bytes} bytes on the learner (limits.robot_disk_bytes = "
                f"{self.disk_bytes}); it keeps its data and retries: raise the quota or start a new run")
        if self.segments_per_min:
            q = self._recent(self._segments, robot_id, now)
            if len(q) >= self.segments_per_min:
                raise QuotaError(
                    f"robot {robot_id!r} filled {len(q)} segments in the last minute (limits.robot_segments_per_min = "
                    f"{self.segments_per_min}); it keeps its data and retries: send fewer, larger chunks")

    def sealed(self, robot_ids: Iterable[str]) -> None:
        """A segment holding rows of these robots was sealed."""
        if self.segments_per_min:
            now = time.monotonic()
            for rid in robot_ids:
                self._recent(self._segments, rid, now).append(now)
