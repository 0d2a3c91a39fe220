"""Embodiment groups of a learner (``[groups]``): which robots share a policy and a buffer.

A policy has one observation and action size, so robots of another embodiment
(another episode spec) need their own. ``mode = "auto"`` starts a group for
each new spec; ``mode = "fixed"`` (the default, and what runs did before
groups) keeps to the groups the run has and refuses a robot that fits none.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .config_base import Strict
from .ids import check_id


class NamedGroup(Strict):
    name: str = Field(
        ..., description="the group's name: its folder (<data_dir>/groups/<name>/ unless it is the first group), "
        "its key in /status and its Prometheus label; 1-64 of A-Z a-z 0-9 . _ -",
    )
    robots: list[str] = Field(
        default_factory=list, description="robot id patterns (fnmatch: \"arm-*\") of the robots this group takes, "
        "and only those; empty: any robot whose episode spec fits the group (the first such robot fixes it)",
    )
    learner: dict[str, Any] = Field(
        default_factory=dict, description="[learner] keys this group trains with instead of the run's "
        "(e.g. { hidden = [64, 64], learning_starts = 500 }); checked like [learner]; paths in it: absolute",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if len(v) > 64:
            raise ValueError(f"group name {v[:40]!r}... is longer than 64 characters")
        return check_id("group name", v)


class GroupsConfig(Strict):
    mode: Literal["auto", "fixed"] = Field(
        "fixed", description="auto: a robot whose episode spec fits no group starts a new one (named from its "
        "driver and a hash of its spec), with its own buffer, policy and checkpoints; fixed: the groups are the first "
        "group and those under [[groups.named]], and a robot that fits none is refused (spec_mismatch, naming the "
        "field that differs from the closest group)",
    )
    max_groups: int = Field(8, ge=1, le=256, description="most groups a run holds (each trains its own policy); "
                            "a robot that would start one more is refused")
    named: list[NamedGroup] = Field(
        default_factory=list, description="groups with a pinned name, robot id patterns and learner settings; "
        "the first entry is the run's first group (today's paths: <data_dir>/buffer, policy, checkpoints)",
    )

    @model_validator(mode="after")
    def _unique(self) -> "GroupsConfig":
        names = [g.name for g in self.named]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"groups.named: the name {dupes[0]!r} is used twice")
        if len(self.named) > self.max_groups:
            raise ValueError(f"groups.named lists {len(self.named)} groups, more than max_groups ({self.max_groups})")
        return self
