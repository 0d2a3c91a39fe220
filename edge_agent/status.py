"""The agent's status records: what each key of status.json and the link report holds.

``AgentStatus`` is the one snapshot behind ``<state_dir>/status.json``,
``/metrics`` and systemd's STATUS= line; ``LinkReport`` is the short status
the robot sends the learner over its link (it shows under ``robots.<id>.reported``
in the learner's /status). Both are plain dicts on the wire and on disk
(TypedDicts), so the JSON is unchanged; the types say what is in them.
Keys are documented in docs (``edge-agent status``); change them with the docs.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Jitter(TypedDict):
    """Lateness of control ticks against their schedule, in milliseconds."""

    p50_ms: float
    p99_ms: float
    max_ms: float


class ChunkReport(TypedDict):
    """Action-chunk execution (shared.chunk_exec.ChunkCounters), flat, as the learner hears it."""

    chunks_requests: int  # chunk requests sent (cloud) or made (a chunked policy on the robot)
    chunks_chunks: int  # chunks taken
    chunks_late_ticks: int  # ticks mid-episode without an action from a chunk: the safe action ran
    chunks_start_ticks: int  # ticks at an episode's start before its first chunk came
    chunks_lost: int  # requests unanswered within policy.request_timeout_ms
    chunks_stale: int  # chunks dropped: late answers, duplicates, all in the past
    chunks_blended: int  # seams crossfaded
    chunks_refused: int  # requests the learner refused (rate, in-flight, latency budget, no policy)
    chunks_rtt_ms: float  # the latest round trip


class LinkReport(ChunkReport):
    """Robot -> learner, every few seconds on the link."""

    policy_version: int
    steps: int
    episodes: int
    successes: int
    spool_bytes: int
    spool_pending: int
    acked_seq: int
    jitter_p99_ms: float
    paused: str  # "" or why no new episode starts: operator_pause, spool_full, spool_disk_error, ...
    disk_error: str
    intervention: bool  # the operator's ROS 2 intervention flag
    episode_step: int
    human_driving: bool  # a human drives through the teleop device this tick
    interventions: int  # control ticks a human drove so far
    takeovers: int  # times a human took control so far


class LinkStatus(TypedDict):
    connected: bool
    url: str
    reconnects: int
    last_error: str
    refused: str  # "code: message" while the learner refuses this robot
    learner_holding: bool  # the learner's storage fails: it keeps nothing, the robot keeps its data
    last_ack_age_s: float | None
    policy_refused_reason: str  # weights from an unproven learner are refused
    process_pid: int | None  # the link process (the control process restarts it if it dies)
    process_restarts: int  # times the link process died and was started again


class SpoolStatus(TypedDict):
    bytes: int
    quota_bytes: int
    fill: float | None  # share of the quota in use; None without a quota
    pending_chunks: int
    acked_seq: int
    last_seq: int
    disk_error: str


class ControlStatus(TypedDict):
    target_hz: float
    rate_hz: float
    steps: int
    episodes: int
    jitter_p50_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    paused: str


class TeleopStatus(TypedDict):
    device: str  # "" without a [teleop] table
    human_driving: bool
    interventions: int  # control ticks a human drove
    takeovers: int  # times a human took control
    read_errors: int  # device reads that failed (the policy kept control)
    recording: bool  # edge-agent record: every step is a demonstration


class AgentStatus(TypedDict):
    time: float  # wall clock of the snapshot (status.json readers judge staleness by it)
    pid: int
    robot_id: str
    state: str  # starting, running, draining, stopped
    status_interval_s: float
    metrics_url: str
    policy_version: int
    link: LinkStatus
    spool: SpoolStatus
    control: ControlStatus
    teleop: TeleopStatus
    chunks: dict[str, Any]  # where the policy runs and the chunk counters (ChunkReport's, unprefixed)
