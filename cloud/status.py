"""The learner's status record: what each key of the admin listener's ``/status`` holds.

One snapshot (``cloud.app.snapshot``) feeds ``/status``, ``cloud-learner
status`` and the Prometheus collector. It is a plain dict in JSON (a
TypedDict), so the output is unchanged; the types say what is in it. Keys are
documented for operators (docs); change them with the docs.
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
    reported: dict[str, Any]  # the robot's own last status report, as it sent it (untrusted)


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
