"""Robot-side observability: ``<state_dir>/status.json``, its reader for
``edge-agent status``, and the Prometheus collector (served by ``shared.metrics``).

One snapshot feeds all three, so the file, the metrics and systemd's STATUS=
line never disagree. The file is rewritten atomically (temp + rename) every
``service.status_interval_s``; it is not fsynced: it describes the present and
is worthless after a power cut anyway, and SD cards wear.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shared.fsutil import atomic_write

from .status import AgentStatus

STATUS_FILE = "status.json"


def write_status(state_dir: Path, status: AgentStatus) -> None:
    atomic_write(Path(state_dir) / STATUS_FILE, json.dumps(status, indent=1).encode(), fsync=False)


def read_status(state_dir: Path) -> AgentStatus | None:
    try:
        return cast(AgentStatus, json.loads((Path(state_dir) / STATUS_FILE).read_text()))  # as write_status wrote it
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stale_after(status: AgentStatus) -> float:
    """A status older than this is from an agent that is no longer running."""
    interval = float(status.get("status_interval_s", 2.0))
    return max(3 * interval, interval + 5.0)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def is_online(s: AgentStatus, now: float | None = None) -> bool:
    """Fresh, not stopped, and its process still exists (a kill -9 leaves a fresh-looking file)."""
    now = time.time() if now is None else now
    return s["state"] != "stopped" and now - float(s["time"]) <= stale_after(s) and pid_alive(int(s["pid"]))


def summary_line(s: AgentStatus) -> str:
    """The short form: systemd's STATUS= line and the first line of ``edge-agent status``."""
    link, spool, ctl = s["link"], s["spool"], s["control"]
    parts = [
        s["state"],
        "link up" if link["connected"] else "link down",
        f"policy v{s['policy_version']}",
        f"{ctl['rate_hz']:.1f} Hz",
        f"spool {spool['pending_chunks']} unacked",
    ]
    if ctl.get("paused"):
        parts.append(f"paused={ctl['paused']}")
    if link.get("refused"):
        parts.append(f"REFUSED by the learner ({link['refused']})")
    elif link.get("learner_holding"):
        parts.append("learner storage full: holding data")
    return ", ".join(parts)


def format_status(s: AgentStatus | None, now: float | None = None, where: str = "") -> tuple[str, bool]:
    """Human-readable status and whether the agent is online."""
    if s is None:
        return f"offline (no status file{' at ' + where if where else ''}: the agent has not run here)", False
    now = time.time() if now is None else now
    age = max(0.0, now - float(s["time"]))
    online = is_online(s, now)
    head = "online" if online else f"offline (last update {age:.0f} s ago, state was {s['state']})"
    link, spool, ctl = s["link"], s["spool"], s["control"]
    share, ack_age = spool.get("fill"), link.get("last_ack_age_s")
    fill = f"{share * 100:.1f}% of quota" if share is not None else "no quota"
    ack = f"{ack_age:.1f} s before the update" if ack_age is not None else "none yet"
    rows = [
        ("agent", f"{head}; pid {s['pid']}; robot {s['robot_id']}"),
        ("link", f"{'up' if link['connected'] else 'down'} {link['url']} (reconnects {link['reconnects']})"
                 + (f"; last error: {link['last_error']}" if link.get("last_error") and not link["connected"] else "")),
        ("policy", f"version {s['policy_version']}"),
        ("spool", f"{spool['bytes']} bytes ({fill}), {spool['pending_chunks']} chunks unacked, acked seq {spool['acked_seq']}"),
        ("last ack", ack),
        ("control", f"{ctl['rate_hz']:.1f} Hz (target {ctl['target_hz']:g}), jitter p50 {ctl['jitter_p50_ms']:.2f} ms "
                    f"p99 {ctl['jitter_p99_ms']:.2f} ms max {ctl['jitter_max_ms']:.2f} ms"),
        ("episodes", f"{ctl['episodes']} ({ctl['steps']} steps)" + (f"; paused: {ctl['paused']}" if ctl.get("paused") else "")),
    ]
    if s.get("metrics_url"):
        rows.append(("metrics", s["metrics_url"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows), online


class _AgentCollector:
    def __init__(self, snapshot: Callable[[], AgentStatus | None]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        if not s:
            return
        link, spool, ctl = s["link"], s["spool"], s["control"]

        def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is not None:
                yield GaugeMetricFamily(f"fleetrl_agent_{name}", doc, value=float(value))

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(f"fleetrl_agent_{name}", doc, value=float(value))

        info = GaugeMetricFamily("fleetrl_agent_info", "this agent (value 1)", labels=["robot_id", "state"])
        info.add_metric([s["robot_id"], s["state"]], 1.0)
        yield info
        yield from gauge("link_up", "1 while the link to the learner is up", int(link["connected"]))
        yield counter("link_reconnects", "link sessions that ended and were redialled", link["reconnects"])
        yield from gauge("link_refused", "1 while the learner refuses this robot (why: status link.refused)",
                         int(bool(link.get("refused"))))
        yield from gauge("learner_holding", "1 while the learner's storage fails and it keeps nothing (disk full)",
                         int(bool(link.get("learner_holding"))))
        yield from gauge("last_ack_age_seconds", "seconds since the learner last acked a chunk", link.get("last_ack_age_s"))
        yield from gauge("policy_version", "policy version acting now", s["policy_version"])
        yield from gauge("spool_bytes", "bytes in the durable spool", spool["bytes"])
        yield from gauge("spool_quota_bytes", "spool quota (absent: none)", spool["quota_bytes"] or None)
        yield from gauge("unacked_chunks", "spooled chunks the learner has not acked", spool["pending_chunks"])
        yield from gauge("control_rate_hz", "measured control-loop rate", ctl["rate_hz"])
        yield from gauge("control_target_rate_hz", "configured control-loop rate (0: free-running)", ctl["target_hz"])
        jitter = GaugeMetricFamily("fleetrl_agent_control_jitter_seconds", "tick lateness against schedule", labels=["quantile"])
        for q, ms in (("0.5", ctl["jitter_p50_ms"]), ("0.99", ctl["jitter_p99_ms"]), ("1", ctl["jitter_max_ms"])):
            jitter.add_metric([q], ms / 1e3)
        yield jitter
        yield counter("steps", "control steps taken", ctl["steps"])
        yield counter("episodes", "episodes finished", ctl["episodes"])
        yield from gauge("paused", "1 while no new episode may start (spool full, operator, disk)", int(bool(ctl.get("paused"))))


def render_metrics(snapshot: Callable[[], AgentStatus | None]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AgentCollector(snapshot))  # type: ignore[arg-type]
    return generate_latest(registry)
