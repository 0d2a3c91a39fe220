"""Robot and episode ids: one rule everywhere, because ids become file names.

An export writes ``<out>/<robot_id>/<episode_id>.mcap``, so an id must never
be a path: ASCII letters, digits, ``.``, ``_`` and ``-`` only (no ``/``, no
look-alike Unicode), 1-128 characters, and not starting with ``.`` (which
rules out ``.`` and ``..`` and hidden files). "arm-01" and "arm_1.a" are fine.
"""

from __future__ import annotations

import re

PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
SAFE_ID = re.compile(PATTERN[1:-1])  # use with fullmatch
RULE = "1-128 of A-Z a-z 0-9 . _ -, not starting with '.'"


def is_safe_id(value: object) -> bool:
    return isinstance(value, str) and SAFE_ID.fullmatch(value) is not None


def check_id(kind: str, value: object) -> str:
    """``value`` if it is a safe id; ValueError naming ``kind`` and the rule otherwise."""
    if not is_safe_id(value):
        shown = value[:40] if isinstance(value, str) else value
        raise ValueError(f"{kind} {shown!r} is not a valid id (use {RULE})")
    assert isinstance(value, str)
    return value
