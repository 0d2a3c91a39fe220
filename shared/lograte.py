"""Rate-limited log lines: a fault that repeats (a full disk, a flapping link)
says so once per interval per kind, not once per attempt, and the next line
it lets through counts what it held back, so nothing is hidden."""

from __future__ import annotations

import logging
import time
from typing import Any, Hashable


class LogLimiter:
    """At most one line per key every ``interval`` seconds."""

    MAX_KEYS = 4096  # keys carry robot ids; forget stale ones rather than grow without bound

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._seen: dict[Hashable, list[float | int]] = {}  # key -> [time of the last line, lines held back]

    def log(self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless a line with this key went out less than ``interval`` ago."""
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if len(self._seen) >= self.MAX_KEYS:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        held = int(seen[1]) if seen is not None else 0
        self._seen[key] = [now, 0]
        if held:
            msg, args = msg + " repeated=%d", (*args, held)
        logger.log(level, msg, *args)
        return True
