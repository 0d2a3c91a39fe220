"""Named crash points for the fault-injection suite.

``FLEETRL_CRASH_AT=name[:n]`` makes the process SIGKILL itself the n-th time
(default first) it passes ``crash_point(name)``: a real kill -9 at an exact
place (mid-seal, mid-checkpoint) instead of a lucky timing. Unset, it costs
one dict lookup.

``FLEETRL_HANG_AT=name[:n]`` makes the thread that passes ``hang_point(name)``
the n-th time block forever: a hung driver call, so the systemd watchdog tests
see a real hung control loop (``control_tick`` is passed before every robot step).
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("FLEETRL_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_hang_counts: dict[str, int] = {}


def hang_point(name: str) -> None:
    spec = os.environ.get("FLEETRL_HANG_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hang_counts[name] = _hang_counts.get(name, 0) + 1
    if _hang_counts[name] >= int(nth or 1):
        threading.Event().wait()  # never set: this thread is stuck, like a driver call that never returns
