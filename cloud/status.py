"""The learner's status record: what each key of the admin listener's ``/status`` holds.

One snapshot (``cloud.app.snapshot``) feeds ``/status``, ``cloud-learner
status`` and the Prometheus collector. It is a plain dict in JSON (a
TypedDict), so the output is unchanged; the types say what is in it. Keys are
documented for operators (docs); change them with the docs.

With embodiment groups (``[groups]``), the top-level keys stay what tools read
before groups: the learner's own figures (``run_id``, ``success_rate``,
``mean_return``, ``policy_version``, ``updates``, ``updates_per_s``,
``losses``, ``resumed_from_*``, ``learner_device``) are the FIRST group's;
counts (``buffer_rows``, ``episodes``, ``rows_by_robot``, ``hwm``,
``ingest``, ``storage``, ``publish_failures``) are the run's TOTALS over all
groups; ``trainer_error`` is the first group's error found. ``groups`` holds
each group's own figures. A run of one group reads exactly as before.
"""

from __future__ import annotations

from typing import Any, TypedDict


class StorageStatus(TypedDict):
    holding: bool  # buffer writes fail: robots are told to hold their data
    write_failures: int
    last_write_error: str | None


class IngestStatus(TypedDict):
    chunks: int  # made durable
    rows: int
    duplicates: int  # resent chunks recognised and dropped


class RobotLinkStatus(TypedDict):
    since: float  # wall clock the link opened
    chunks: int
    authenticated: bool
    commands: bool  # its hello offered operator commands (POST /admin/robots/<id>/command)
    cloud_policy: bool  # its hello offered cloud inference (policy.where = "cloud")
    reported: dict[str, Any]  # the robot's own last status report, as it sent it (untrusted)
    group: str | None  # the embodiment group its link uses


class LearnerStatus(TypedDict):
    time: float
    run_id: str
    data_dir: str
    buffer_rows: int
    rows_by_robot: dict[str, int]
    hwm: dict[str, int]  # robot id -> highest durable stream seq
    episodes: int
    success_rate: float | None  # over the last episodes; None before any
    mean_return: float | None  # mean summed reward of the same episodes
    policy_version: int
    updates: int
    resumed_from_update: int | None
    resumed_from_policy: int | None
    publish_failures: int
    last_publish_error: str | None
    storage: StorageStatus
    updates_per_s: float
    learner_device: str | None  # where the trainer trains (None until it starts, or without one)
    losses: dict[str, float]
    trainer_error: str | None
    ingest: IngestStatus
    robots: dict[str, RobotLinkStatus]  # linked now
    rejections: dict[str, int]  # reason code -> links refused
    groups: dict[str, "GroupStatus"]  # name -> each embodiment group's own figures
    inference: dict[str, Any]  # the policy server's figures (cloud.policy_server.PolicyServer.status)


class GroupStatus(TypedDict):
    spec: dict[str, Any] | None  # {"observation": {field: shape}, "action_dim": n}; None before its first robot
    driver: str  # the driver its first robot named ("" before it, or for a run from before groups)
    data_dir: str  # its buffer, policy and checkpoints
    robot_patterns: list[str]  # [[groups.named]] robots: the robot ids it takes (empty: by spec)
    robots: list[str]  # linked now
    buffer_rows: int
    episodes: int
    success_rate: float | None
    mean_return: float | None
    policy_version: int
    updates: int
    updates_per_s: float
    losses: dict[str, float]
    trainer_error: str | None


def group_status(group: Any, robots: list[str]) -> GroupStatus:
    """One entry of ``groups`` (``group`` is a :class:`cloud.groups.Group`; robots: those linked to it)."""
    buffer, trainer, spec = group.buffer, group.trainer, group.buffer.spec
    return {
        "spec": None if spec is None else {"observation": {k: list(f.shape) for k, f in spec.observation.items()},
                                           "action_dim": spec.action_dim},
        "driver": group.driver,
        "data_dir": str(group.root),
        "robot_patterns": list(group.patterns),
        "robots": sorted(robots),
        "buffer_rows": buffer.rows,
        "episodes": buffer.episodes_total,
        "success_rate": buffer.success_rate(),
        "mean_return": buffer.mean_return(),
        "policy_version": group.publisher.version,
        "updates": trainer.updates if trainer else 0,
        "updates_per_s": round(trainer.updates_per_s, 1) if trainer else 0.0,
        "losses": dict(trainer.last_losses) if trainer else {},
        "trainer_error": repr(trainer.error) if trainer and trainer.error else None,
    }
