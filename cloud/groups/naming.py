"""Group names: deterministic, and safe to use as a folder name.

A robot's unit description is untrusted input (its hello), so the driver name
is reduced to id characters before it becomes part of a path."""

from __future__ import annotations

import re
from typing import Any, Sequence

from shared.ids import is_safe_id
from shared.schema import EpisodeSpec

from ..buffer.specs import spec_key

FIRST = "default"  # the first group's name until its first robot names it (or a [[groups.named]] entry does)
DRIVER_CHARS = 40


def driver_name(units: Sequence[dict[str, Any]]) -> str:
    """The robot unit's driver from a hello's units, as id characters ("robot" when it names none)."""
    robots = [u for u in units if isinstance(u, dict) and u.get("kind") == "robot"] or list(units)
    driver = next((str(u["driver"]) for u in robots if isinstance(u.get("driver"), str)), "")
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", driver).strip("_-")[:DRIVER_CHARS]
    return clean or "robot"


def auto_name(units: Sequence[dict[str, Any]], spec: EpisodeSpec, taken: Sequence[str] = ()) -> str:
    """``<driver>-<spec hash>``: the same robots name the same group on every learner; a
    name already taken (by a pinned group) gets a numbered suffix."""
    base = f"{driver_name(units)}-{spec_key(spec)}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    assert is_safe_id(name)
    return name
