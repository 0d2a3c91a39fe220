"""Embodiment groups: robots grouped by their episode spec, each group with its own
buffer, ingest, trainer and weight publisher (``group``), found or started for a
robot at its hello (``registry``), named after its driver and spec (``naming``)."""

from .group import Group
from .registry import GroupRegistry

__all__ = ["Group", "GroupRegistry"]
