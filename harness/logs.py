"""Daemon logs as an operator reads them: quiet under faults, and the events
a benchmark times."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from pathlib import Path

# Progress lines, not symptoms of a fault: they may come often (a fast learner publishes many times a second).
PROGRESS_EVENTS = {"policy_published", "policy_swapped", "checkpoint_saved", "drained", "status"}

_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def assert_logs_quiet(path: Path, per_second: int = 1) -> Counter:
    """A fault run's log: no unretrieved-exception or other tracebacks, and at
    most ``per_second`` lines per event kind (per robot) in any one second.
    Returns the count of lines per event kind."""
    text = path.read_text()
    assert "never retrieved" not in text, f"{path.name}: an unretrieved exception:\n" + _lines_with(text, "never retrieved")
    assert "traceback=" not in text and "Traceback" not in text, f"{path.name}: a traceback:\n" + _lines_with(text, "raceback")
    per: Counter = Counter()
    kinds: Counter = Counter()
    for line in text.splitlines():
        m = re.search(r" event=(\w+)", line)
        if not m or m.group(1) in PROGRESS_EVENTS:
            continue
        robot = re.search(r" robot_id=(\S+)", line)
        kinds[m.group(1)] += 1
        per[(line[:19], m.group(1), robot.group(1) if robot else "")] += 1
    worst = per.most_common(1)
    assert not worst or worst[0][1] <= per_second, \
        f"{path.name}: {worst[0][1]} lines of {worst[0][0][1:]} in the second {worst[0][0][0]}"
    return kinds


def _lines_with(text: str, needle: str) -> str:
    return "\n".join([line[:600] for line in text.splitlines() if needle in line][:3])


def log_events(log: Path, event: str) -> list[tuple[float, str]]:
    """(unix time, line) of each ``event=<event>`` line of a daemon log."""
    out = []
    for ln in log.read_text(errors="replace").splitlines():
        if f"event={event}" in ln:
            m = _TS.match(ln)
            if m:
                t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append((t, ln))
    return out

