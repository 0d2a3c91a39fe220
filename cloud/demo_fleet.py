"""The demo's fleet: ``--robots 2`` (that many Fetch robots of ``--task``) or a mixed fleet such as
``reach:2,point_mass:2``, each kind its driver and options. A mixed fleet runs the learner with
``groups.mode = "auto"``: each embodiment trains its own policy (``cloud.groups``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FETCH_TASKS = ("reach", "push")
POINT_MASS_DIMS = 3  # the 3-D point mass of docs/drivers.md
KINDS = (*FETCH_TASKS, "point_mass")
MAX_ROBOTS = 8
_ENTRY = re.compile(r"^([a-z_]+):([0-9]+)$")


@dataclass(frozen=True)
class RobotKind:
    """One kind of simulated robot: its name in ``--robots``, driver and driver options."""

    name: str
    driver: str
    options: dict[str, Any]

    @property
    def label(self) -> str:
        return f"Fetch-{self.name}" if self.driver == "mujoco_fetch" else f"point mass ({POINT_MASS_DIMS}-D)"


def kind(name: str) -> RobotKind:
    if name in FETCH_TASKS:
        return RobotKind(name, "mujoco_fetch", {"task": name})
    if name == "point_mass":
        return RobotKind(name, "point_mass", {"dims": POINT_MASS_DIMS})
    raise ValueError(f"{name!r} is not a robot kind (use {', '.join(KINDS)})")


@dataclass(frozen=True)
class Fleet:
    """The robots to start, in order, each with its id: ``sim-<i>`` for a plain fleet (as before),
    ``<kind>-<i>`` for a mixed one."""

    robots: tuple[tuple[str, RobotKind], ...]
    mixed: bool

    @property
    def kinds(self) -> list[RobotKind]:
        return list({k.name: k for _, k in self.robots}.values())

    def describe(self) -> str:
        counts = {k.label: sum(1 for _, r in self.robots if r.name == k.name) for k in self.kinds}
        return " + ".join(f"{n} {label}" for label, n in counts.items())


def parse_fleet(spec: str, task: str = "reach") -> Fleet:
    """``"2"`` (Fetch robots of ``task``) or ``"reach:2,point_mass:2"``; ValueError saying what is wrong."""
    spec = spec.strip()
    if spec.isdigit():
        n = int(spec)
        if not 1 <= n <= MAX_ROBOTS:
            raise ValueError(f"{n} robots: use 1 to {MAX_ROBOTS}")
        k = kind(task)
        return Fleet(tuple((f"sim-{i}", k) for i in range(n)), mixed=False)
    robots: list[tuple[str, RobotKind]] = []
    for entry in spec.split(","):
        m = _ENTRY.match(entry.strip())
        if m is None:
            raise ValueError(f"{entry.strip()!r}: use KIND:COUNT, e.g. reach:2,point_mass:2 (kinds: {', '.join(KINDS)})")
        k = kind(m.group(1))
        if any(r.name == k.name for _, r in robots):
            raise ValueError(f"{k.name} is listed twice")
        robots += [(f"{k.name}-{i}", k) for i in range(int(m.group(2)))]
    if not 1 <= len(robots) <= MAX_ROBOTS:
        raise ValueError(f"{len(robots)} robots: use 1 to {MAX_ROBOTS} in all")
    return Fleet(tuple(robots), mixed=len({k.name for _, k in robots}) > 1)


def fleet_rate(status: dict[str, Any]) -> tuple[float | None, int]:
    """(success rate, episodes) the demo's curve and target follow: the learner's own with one group; with
    several, the slowest group's rate (None until each group has one) and the fewest episodes of a group."""
    groups = status.get("groups") or {}
    if len(groups) <= 1:
        return status.get("success_rate"), int(status.get("episodes", 0))
    rates = [g.get("success_rate") for g in groups.values()]
    episodes = min(int(g.get("episodes", 0)) for g in groups.values())
    return (None if any(r is None for r in rates) else min(rates)), episodes


def group_lines(status: dict[str, Any]) -> list[str]:
    """One line per group for the summary (none for a run of one group)."""
    groups = status.get("groups") or {}
    if len(groups) <= 1:
        return []
    return [f"group {name} ({', '.join(g.get('robots') or []) or 'no robot linked'}): success "
            f"{g.get('success_rate') or 0:.0%} over its last 50 episodes; {g.get('buffer_rows', 0)} transitions in "
            f"{g.get('episodes', 0)} episodes; policy v{g.get('policy_version', 0)}; {g.get('updates', 0)} updates"
            for name, g in sorted(groups.items())]
