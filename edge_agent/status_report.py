"""What the agent reports about itself: the link report the learner hears and the snapshot behind
status.json, /metrics and systemd's STATUS= line (their keys: :mod:`edge_agent.status`). Built from the
running :class:`edge_agent.daemon.Agent`, kept apart so the daemon holds the wiring only."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from . import chunk_source
from .status import AgentStatus, LinkReport

if TYPE_CHECKING:
    from .daemon import Agent


def link_report(a: Agent) -> LinkReport:
    """The short report the robot sends the learner over its link."""
    c = a.control
    j = c.jitter()
    return {
        "policy_version": a.policy.version, "steps": c.steps, "episodes": c.episodes,
        "successes": c.successes, "spool_bytes": a.spool.bytes, "spool_pending": a.spool.pending(),
        "acked_seq": a.spool.acked_seq, "jitter_p99_ms": round(j["p99_ms"], 3),
        "paused": paused_reason(a), "disk_error": a.disk_error,
        "intervention": a.operator.intervention, "episode_step": a.control.episode_step,
        "human_driving": c.human.driving, "interventions": c.human.interventions, "takeovers": c.human.takeovers,
        **chunk_source.report(c.chunks),
    }


def paused_reason(a: Agent) -> str:
    """Why the robot takes no steps now ("" while it runs)."""
    if not a.operator.running.is_set():
        return "operator_pause"
    if a.control.waiting_to_start:
        if a.may_start.is_set():
            return "waiting_for_start_episode"
        return "spool_disk_error" if a.disk_error else "spool_full"
    return ""


def snapshot(a: Agent) -> AgentStatus:
    """The one snapshot behind status.json, /metrics and systemd's STATUS= line."""
    c, up, sp, link = a.control, a.link_state, a.spool, a.feed.supervisor
    j = c.jitter()
    return {
        "time": time.time(), "pid": os.getpid(), "robot_id": a.cfg.robot_id, "state": a.state,
        "status_interval_s": a.cfg.service.status_interval_s, "metrics_url": a.metrics_url,
        "policy_version": a.policy.version,
        "link": {
            "connected": up["connected"], "url": up["url"], "reconnects": up["reconnects"],
            "last_error": up["last_error"], "refused": up["refused"], "learner_holding": up["learner_holding"],
            "last_ack_age_s": None if a._last_ack is None else round(time.monotonic() - a._last_ack, 3),
            "policy_refused_reason": up["policy_refused_reason"],  # weights from an unproven learner are refused
            "process_pid": up["pid"], "process_restarts": link.restarts,
        },
        "spool": {
            "bytes": sp.bytes, "quota_bytes": sp.quota_bytes, "fill": sp.bytes / sp.quota_bytes if sp.quota_bytes else None,
            "pending_chunks": sp.pending(), "acked_seq": sp.acked_seq, "last_seq": sp.last_seq,
            "disk_error": a.disk_error,
        },
        "control": {
            "target_hz": a.cfg.control.rate_hz, "rate_hz": round(a._rate.rate, 2), "steps": c.steps,
            "episodes": c.episodes, "jitter_p50_ms": round(j["p50_ms"], 3), "jitter_p99_ms": round(j["p99_ms"], 3),
            "jitter_max_ms": round(j["max_ms"], 3), "paused": paused_reason(a),
        },
        "teleop": {
            "device": a.cfg.teleop.device if a.cfg.teleop is not None else "",
            "human_driving": c.human.driving, "interventions": c.human.interventions,
            "takeovers": c.human.takeovers, "read_errors": c.human.read_errors,
            "recording": a.record_episodes is not None,
        },
        "chunks": {"where": a.cfg.policy.where, **(c.chunks.counters if c.chunks is not None else {})},
    }
