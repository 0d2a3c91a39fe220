"""The run's groups, and which one a robot belongs to.

At its hello a robot is placed by, in order: a pinned group whose robot id
patterns name it; the group that already holds its data (a robot's stream
continues in one buffer: with another spec it is refused, not moved); a group
with its spec; a group with no spec yet (its first robot fixes it); in
``groups.mode = "auto"`` a new group. Otherwise it is refused with the field
that differs from the closest group. A group is never chosen by default:
every robot is matched to its group's spec, the first group's included.

A restart re-opens every group from disk: the first at ``<data_dir>``, each
pinned one, and every folder under ``<data_dir>/groups/`` whose buffer has a spec.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from shared.config import LearnerConfig
from shared.errors import SchemaError
from shared.ids import is_safe_id
from shared.protocol import Limits
from shared.schema import EpisodeSpec

from ..learner.trainer import Trainer
from ..buffer.specs import spec_difference, spec_distance
from .group import CHECKPOINT, GROUPS_DIR, META, Group, group_root, open_group, open_group_async
from .naming import FIRST, auto_name, driver_name

log = logging.getLogger("fleetrl.groups")


def stored_checkpoints(data_dir: Path) -> list[Path]:
    """Learner checkpoints of every group in a data dir (a run that needs ``--resume`` to continue)."""
    found = [data_dir / CHECKPOINT] + sorted((data_dir / GROUPS_DIR).glob(f"*/{CHECKPOINT}"))
    return [p for p in found if p.exists()]


class GroupRegistry:
    """The groups of one learner, in the order they were opened (the first is the run's first group)."""

    def __init__(self, cfg: LearnerConfig, limits: Limits, groups: list[Group]):
        self.cfg, self.limits = cfg, limits
        self._groups = groups
        self._lock = asyncio.Lock()  # one robot at a time may start a group
        self._started: tuple[asyncio.AbstractEventLoop, bool, bool] | None = None
        self._watchers: list[Callable[[Group], None]] = []

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, cfg: LearnerConfig, limits: Limits) -> "GroupRegistry":
        """Every group of the run from disk (blocking); a cluster shard opens the groups of its own data dir."""
        data_dir, named = cfg.data_dir, list(cfg.groups.named)
        pin = named[0] if named else None
        first = open_group(pin.name if pin else FIRST, data_dir, cfg.group_learner(pin), cfg.limits, limits,
                           first=True, patterns=pin.robots if pin else (), pinned=pin is not None)
        meta = first.buffer.extra(META)
        if pin is None and isinstance(meta, dict) and is_safe_id(meta.get("name")):
            first.name = str(meta["name"])  # named by its first robot in an earlier start
        groups = [first]
        for g in named[1:]:
            groups.append(open_group(g.name, group_root(data_dir, g.name, False), cfg.group_learner(g), cfg.limits,
                                     limits, patterns=g.robots, pinned=True))
        root = data_dir / GROUPS_DIR
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if not d.is_dir() or not is_safe_id(d.name) or any(g.name == d.name for g in groups):
                continue
            if not (d / "buffer" / "manifest.json").exists():
                continue  # a group started but never given a robot: nothing to serve
            groups.append(open_group(d.name, d, cfg.learner, cfg.limits, limits))
        if len(groups) > 1:
            log.info("event=groups_opened groups=%s", [g.name for g in groups])
        return cls(cfg, limits, groups)

    def start(self, loop: asyncio.AbstractEventLoop, with_trainer: bool, resume: bool) -> None:
        """Start every group's writer and trainer; groups started later start the same way."""
        self._started = (loop, with_trainer, resume)
        for g in self._groups:
            g.start(loop, with_trainer, resume)

    def watch(self, fn: Callable[[Group], None]) -> None:
        """Call ``fn`` for every group now and for each one started later (a cluster shard hooks its
        learner notification into each group's ingest this way)."""
        self._watchers.append(fn)
        for g in self._groups:
            fn(g)

    async def stop(self) -> None:
        for g in self._groups:
            await g.stop_trainer()
        for g in self._groups:
            await g.stop_writer()

    # ---------------------------------------------------------------- reading

    @property
    def first(self) -> Group:
        return self._groups[0]

    def __iter__(self) -> Iterator[Group]:
        return iter(list(self._groups))

    def __len__(self) -> int:
        return len(self._groups)

    def get(self, name: str) -> Group | None:
        return next((g for g in self._groups if g.name == name), None)

    def stalest_trainer(self) -> Trainer | None:
        """The live trainer with the oldest heartbeat (what the systemd watchdog watches): any hung group hangs the run."""
        live = [g.trainer for g in self._groups if g.trainer is not None and g.trainer.is_alive()]
        return min(live, key=lambda t: t.alive_at) if live else (self.first.trainer if self._groups else None)

    def home_of(self, robot_id: str) -> Group | None:
        """The group whose buffer holds this robot's stream (its durable mark)."""
        return next((g for g in self._groups if g.buffer.hwm(robot_id) > 0), None)

    # ---------------------------------------------------------------- placing

    async def resolve(self, robot_id: str, spec: EpisodeSpec, units: Sequence[dict[str, Any]] = ()) -> Group:
        """The group this robot's link uses (started if new); SchemaError ``spec_mismatch`` if none may take it."""
        async with self._lock:
            group = self._choose(robot_id, spec)
            if group is None:
                group = await self._new_group(spec, units)
            await asyncio.to_thread(self._admit, group, robot_id, spec, units)
            return group

    def _choose(self, robot_id: str, spec: EpisodeSpec) -> Group | None:
        """An existing group for this robot, None to start one; refuses what no group may take."""
        pinned = next((g for g in self._groups if g.takes(robot_id)), None)
        if pinned is not None:
            self._check(pinned, spec, f"robot {robot_id} is pinned to group {pinned.name!r} (groups.named robots)")
            return pinned
        home = self.home_of(robot_id)
        if home is not None:
            self._check(home, spec, f"robot {robot_id}'s stored stream is in group {home.name!r}")
            return home
        free = [g for g in self._groups if not g.patterns]
        fit = next((g for g in free if g.buffer.spec == spec), None)
        if fit is not None:
            return fit
        empty = next((g for g in free if g.buffer.spec is None and (g.first or g.pinned)), None)
        if empty is not None:
            return empty
        if self.cfg.groups.mode == "auto" and len(self._groups) < self.cfg.groups.max_groups:
            return None
        raise SchemaError(self._refusal(spec), code="spec_mismatch")

    @staticmethod
    def _check(group: Group, spec: EpisodeSpec, why: str) -> None:
        if group.buffer.spec is not None and group.buffer.spec != spec:
            raise SchemaError(f"robot's episode spec differs from group {group.name!r}'s ({why}): "
                              f"{spec_difference(group.buffer.spec, spec, this=f'group {group.name}')}",
                              code="spec_mismatch")

    def _refusal(self, spec: EpisodeSpec) -> str:
        """Why no group takes this spec, naming the field that differs from the closest group."""
        specs = [(g, g.buffer.spec) for g in self._groups if g.buffer.spec is not None]
        if len(self._groups) == 1 and specs:  # a run of one group: today's message, word for word
            return f"robot's episode spec differs from this run's spec: {spec_difference(specs[0][1], spec)}"
        if not specs:
            return "robot's episode spec fits no group: every group is pinned to other robots (groups.named robots)"
        group, theirs = min(specs, key=lambda gs: spec_distance(gs[1], spec))
        if self.cfg.groups.mode == "auto":
            why = f"the run has its groups.max_groups ({self.cfg.groups.max_groups}) groups"
        else:
            why = 'groups.mode = "fixed"'
        return (f"robot's episode spec fits none of the run's {len(self._groups)} groups ({why}); the closest, group "
                f"{group.name!r}, differs in {spec_difference(theirs, spec, this=f'group {group.name}')}")

    async def _new_group(self, spec: EpisodeSpec, units: Sequence[dict[str, Any]]) -> Group:
        taken = [g.name for g in self._groups if g.buffer.spec is not None or g.first or g.pinned]
        name = auto_name(units, spec, taken=taken)
        unfinished = self.get(name)  # started for this spec before, and its first robot was refused (its settings)
        if unfinished is not None:
            return unfinished
        cfg = self.cfg
        group = await open_group_async(name, group_root(cfg.data_dir, name, False), cfg.learner, cfg.limits,
                                       self.limits)
        if group.buffer.spec is not None and group.buffer.spec != spec:  # a folder of that name with other data
            raise SchemaError(f"group folder {group.root} holds another spec; move it away", code="spec_mismatch")
        self._groups.append(group)
        log.info("event=group_started group=%s driver=%s groups=%d", name, driver_name(units), len(self._groups))
        if self._started is not None:
            group.start(*self._started)
        for fn in self._watchers:
            fn(group)
        return group

    def _admit(self, group: Group, robot_id: str, spec: EpisodeSpec, units: Sequence[dict[str, Any]]) -> None:
        """The group takes the robot's spec (the first robot fixes it; blocking: a manifest write)."""
        new = group.buffer.spec is None
        group.buffer.check_spec(spec, robot_id)
        if not new:
            return
        group.driver = driver_name(units)
        if group.first and not group.pinned:
            old, group.name = group.name, auto_name(units, spec, taken=[g.name for g in self._groups if g is not group])
            group.publisher.group = group.name
            log.info("event=group_named group=%s was=%s", group.name, old)
        group.buffer.set_extra(META, {"name": group.name, "driver": group.driver})
