"""Named crash points for the fault-injection suite.

``FLEETRL_CRASH_AT=name[:n]`` makes the process SIGKILL itself the n-th time
(default first) it passes ``crash_point(name)``: a real kill -9 at an exact
place (mid-seal, mid-checkpoint) instead of a lucky timing. Unset, it costs
one dict lookup.
"""

from __future__ import annotations

import os
import signal

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
