"""The newest message per topic, and waiting for fresh ones without polling.

Backend threads put bytes in; the control thread reads the newest sample at
each tick and, when it must wait (pause, reset), waits on a condition that
every arrival notifies.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Sample:
    cdr: bytes
    recv_ns: int  # time.monotonic_ns() at arrival
    count: int  # messages seen on this key so far

    def age_s(self, now_ns: int) -> float:
        return (now_ns - self.recv_ns) / 1e9


class LatestStore:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: dict[str, Sample] = {}
        self._closed = False

    def put(self, key: str, cdr: bytes, recv_ns: int) -> None:
        with self._cond:
            prev = self._latest.get(key)
            self._latest[key] = Sample(cdr, recv_ns, (prev.count if prev else 0) + 1)
            self._cond.notify_all()

    def get(self, key: str) -> Sample | None:
        with self._cond:
            return self._latest.get(key)

    def snapshot(self) -> dict[str, Sample]:
        with self._cond:
            return dict(self._latest)

    def wait_until(self, ready: Callable[[dict[str, Sample], int], bool], timeout_s: float) -> bool:
        """Wait until ``ready(latest, now_ns)`` holds, the timeout passes or the store closes.

        Freshness can also lapse with no arrival, so the wait wakes at most every
        ``timeout_s`` it has left; arrivals wake it at once.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._closed:
                if ready(dict(self._latest), time.monotonic_ns()):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
