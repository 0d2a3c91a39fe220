"""Comparing episode specs: what differs (for refusals an operator can act on), how much
(to name the closest group), and a short stable key (to name a group after its spec)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shared.schema import EpisodeSpec


def _fields(spec: EpisodeSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(observation fields, the other keys) without the wire layout version: an older robot's layout
    is read and upgraded, so it is not what differs between two embodiments."""
    d = spec.to_dict()
    d.pop("version")
    return d.pop("observation"), d


def spec_difference(run: EpisodeSpec, robot: EpisodeSpec, other: str = "robot", this: str = "run") -> str:
    """The first field that differs, with both values: what an operator needs to fix the robot or start a new run."""
    ra, a = _fields(run)
    rb, b = _fields(robot)
    for name in list(ra) + [n for n in rb if n not in ra]:
        if ra.get(name) != rb.get(name):
            return (f"observation.{name}: {this} has {ra.get(name, 'no such field')}, "
                    f"{other} has {rb.get(name, 'no such field')}")
    if list(ra) != list(rb):
        return f"observation field order: {this} has {list(ra)}, {other} has {list(rb)}"
    for key in a:
        if a[key] != b.get(key):
            return f"{key}: {this} has {a[key]}, {other} has {b.get(key)}"
    return "specs differ"


def spec_distance(a: EpisodeSpec, b: EpisodeSpec) -> int:
    """How many fields differ (observation fields, their order, action size and bounds)."""
    oa, ka = _fields(a)
    ob, kb = _fields(b)
    n = sum(oa.get(f) != ob.get(f) for f in set(oa) | set(ob))
    n += int(not n and list(oa) != list(ob))
    return n + sum(ka[k] != kb.get(k) for k in ka)


def spec_key(spec: EpisodeSpec, length: int = 6) -> str:
    """A short hash of what makes an embodiment (not the wire layout): equal specs, equal keys."""
    obs, rest = _fields(spec)
    canon = json.dumps({"observation": list(obs.items()), **rest}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:length]
