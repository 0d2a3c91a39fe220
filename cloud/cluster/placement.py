"""Placement: turn nodes' units and the placement section into Ray resources,
and check that every component replica fits *before* anything starts.

The same first-fit check runs twice: on the config (``cluster show``, and
before connecting) and on the live Ray nodes' resources (before any actor is
created), so a missing GPU or robot is one clear line naming what is missing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.config_groups import GroupsConfig
from shared.errors import ConfigError

from .config import ClusterConfig, NodeConfig, Placement

PREFIX = "fleetrl."
GROUP_SLOTS = 1000  # a group marker is "plenty": it only says *where*, not how much

# resource key -> the unit name used in error messages
UNIT_NAMES = {"CPU": "cpu", "GPU": "accelerator", PREFIX + "robot": "robot", PREFIX + "camera": "camera", PREFIX + "teleop": "teleop"}


class PlacementError(ConfigError):
    code = "unsatisfiable_placement"


def group_key(group: str) -> str:
    return f"{PREFIX}group.{group}"


def node_key(node: str) -> str:
    return f"{PREFIX}node.{node}"


def node_resources(node: NodeConfig) -> dict[str, Any]:
    """What a node offers Ray: ``ray start --num-cpus --num-gpus --resources`` for it."""
    custom: dict[str, float] = {node_key(node.name): 1}
    for g in node.groups:
        custom[group_key(g)] = GROUP_SLOTS
    for kind in ("robot", "camera", "teleop"):
        if node.count(kind):
            custom[PREFIX + kind] = node.count(kind)
    return {"num_cpus": node.cpus, "num_gpus": node.count("accelerator"), "resources": custom}


def bundle(p: Placement) -> dict[str, float]:
    """One replica's Ray resource demand (a placement-group bundle)."""
    b: dict[str, float] = {group_key(p.group): 1}
    for key, n in (("CPU", p.cpus), ("GPU", p.accelerators), (PREFIX + "robot", p.robots),
                   (PREFIX + "camera", p.cameras), (PREFIX + "teleop", p.teleop)):
        if n:
            b[key] = float(n)
    return b


@dataclass
class Plan:
    """Which node each component replica is expected on (first fit)."""

    nodes: dict[str, list[str]] = field(default_factory=dict)  # component -> node name per replica


def _fit(cfg: ClusterConfig, capacity: dict[str, dict[str, float]], where: str) -> Plan:
    """First-fit every replica on ``capacity`` (node -> resource -> amount); raise naming what is missing."""
    free = {n: dict(r) for n, r in capacity.items()}
    plan, problems = Plan(), []
    for comp, p in cfg.components():
        need = bundle(p)
        placed: list[str] = []
        for _ in range(p.replicas):
            node = next((n for n, r in free.items() if all(r.get(k, 0) + 1e-9 >= v for k, v in need.items())), None)
            if node is None:
                break
            for k, v in need.items():
                free[node][k] -= v
            placed.append(node)
        plan.nodes[comp] = placed
        if len(placed) < p.replicas:
            short = p.replicas - len(placed)
            group_nodes = [n for n, r in free.items() if r.get(group_key(p.group), 0) > 0]
            have = {k: sum(free[n].get(k, 0) for n in group_nodes) for k in need if k in UNIT_NAMES}
            missing = ", ".join(
                f"{UNIT_NAMES[k]} x{need[k]:g} (free in group: {have[k]:g})" for k in need if k in UNIT_NAMES and have[k] < need[k]
            ) or ", ".join(f"{UNIT_NAMES[k]} x{need[k]:g}" for k in need if k in UNIT_NAMES) or "a node"
            problems.append(f"{comp} needs {short} more replica(s) on group {p.group!r} "
                            f"[{', '.join(group_nodes) or 'no nodes'}]; each needs {missing}")
    if problems:
        raise PlacementError(f"unsatisfiable placement ({where}): " + "; ".join(problems))
    return plan


def check(cfg: ClusterConfig) -> Plan:
    """Check the placement against the nodes the config describes."""
    capacity = {}
    for n in cfg.nodes:
        r = node_resources(n)
        capacity[n.name] = {"CPU": r["num_cpus"], "GPU": r["num_gpus"], **r["resources"]}
    plan = _fit(cfg, capacity, "config")
    for comp, p in cfg.components():
        if p.accelerators and p.min_accelerator_memory_gb:
            for node in set(plan.nodes[comp]):
                mems = [u.memory_gb or 0 for u in next(x for x in cfg.nodes if x.name == node).units if u.kind == "accelerator"]
                if sum(m >= p.min_accelerator_memory_gb for m in mems) < p.accelerators:
                    raise PlacementError(
                        f"unsatisfiable placement (config): {comp} needs accelerators with >= "
                        f"{p.min_accelerator_memory_gb:g} GB; node {node} has {[f'{m:g} GB' for m in mems]}"
                    )
    return plan


def check_live(cfg: ClusterConfig, ray_nodes: list[dict[str, Any]]) -> Plan:
    """Check the placement against live Ray nodes (``ray.nodes()``), before creating any actor."""
    capacity = {}
    for n in ray_nodes:
        if not n.get("Alive", True):
            continue
        res = n["Resources"]
        name = next((k[len(node_key("")):] for k in res if k.startswith(node_key(""))), n["NodeID"][:8])
        capacity[name] = dict(res)
    return _fit(cfg, capacity, "live Ray cluster")


def render(cfg: ClusterConfig, width: int = 120, embodiments: GroupsConfig | None = None) -> str:
    """Units, node groups, placement and (``embodiments``: the run's ``[groups]``) the embodiment groups the
    shards and the learner serve, as tables (``cloud-learner cluster show``)."""
    try:
        plan, verdict = check(cfg), "placement: OK"
    except PlacementError as e:
        plan, verdict = Plan(), f"placement: ERROR: {e.message}"
    units = Table(title="units", title_justify="left")
    for col in ("node", "groups", "kind", "unit", "details"):
        units.add_column(col)
    for n in cfg.nodes:
        units.add_row(n.name, ",".join(n.groups), "cpu", f"{n.cpus:g} cores", "")
        for u in n.units:
            units.add_row("", "", u.kind, u.name, u.detail())
    groups = Table(title="groups", title_justify="left")
    groups.add_column("group")
    groups.add_column("nodes")
    for g, members in sorted(cfg.groups().items()):
        groups.add_row(g, ", ".join(members))
    place = Table(title="placement", title_justify="left")
    for col in ("component", "group", "replicas", "each needs", "planned nodes"):
        place.add_column(col)
    for comp, p in cfg.components():
        need = ", ".join(f"{UNIT_NAMES[k]} {v:g}" for k, v in bundle(p).items() if k in UNIT_NAMES) or "-"
        place.add_row(comp, p.group, str(p.replicas), need, ", ".join(plan.nodes.get(comp, [])) or "-")
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    tables = [units, groups, place]
    if embodiments is not None:
        tables.append(embodiment_table(cfg, embodiments))
    for t in tables:
        console.print(t)
    console.print(verdict)
    return buf.getvalue()


def embodiment_table(cfg: ClusterConfig, groups: GroupsConfig) -> Table:
    """The embodiment groups (``[groups]``): each has a buffer on every shard its robots link to, a trainer in
    the learner and its own policy, sent to its robots only."""
    shards = ", ".join(s.name for s in cfg.placement.shards)
    t = Table(title=f"embodiment groups (mode {groups.mode})", title_justify="left")
    for col in ("group", "robots", "buffers on shards", "trained by", "weights to"):
        t.add_column(col)
    for g in groups.named:
        t.add_row(g.name, ", ".join(g.robots) or "any whose spec fits", shards, "learner", "its robots")
    if groups.mode == "auto":
        t.add_row("<driver>-<spec hash>", f"each new episode spec (up to {groups.max_groups} groups)", shards,
                  "learner", "its robots")
    elif not groups.named:
        t.add_row("(one group)", "all: the first robot fixes the spec", shards, "learner", "every robot")
    return t
