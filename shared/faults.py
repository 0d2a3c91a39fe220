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

_counts: dict[tuple[str, str], int] = {}


def _reached(variable: str, name: str) -> bool:
    """True the n-th time (and after) ``name`` is passed while ``variable=name[:n]`` is set."""
    spec = os.environ.get(variable)
    if not spec:
        return False
    target, _, nth = spec.partition(":")
    if target != name:
        return False
    key = (variable, name)
    _counts[key] = _counts.get(key, 0) + 1
    return _counts[key] >= int(nth or 1)


def crash_point(name: str) -> None:
    if _reached("FLEETRL_CRASH_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)


def hang_point(name: str) -> None:
    if _reached("FLEETRL_HANG_AT", name):
        threading.Event().wait()  # never set: this thread is stuck, like a driver call that never returns
