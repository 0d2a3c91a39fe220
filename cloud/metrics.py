"""The learner's Prometheus endpoint, on its own localhost listener.

The gateway port faces robots (often the internet); metrics stay on
``metrics.host`` (127.0.0.1 by default), scraped by a local Prometheus or
node agent. The numbers are the ones the admin listener's ``/status`` shows (one snapshot).
Every family is listed in docs/observability.md; examples/grafana-fleetrl.json
is a dashboard over them (a test checks it names only metrics exported here).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily,
                                   Metric)

from shared.config import MetricsConfig
from shared.metrics import RateMeter, start_metrics_listener

from .status import GroupStatus, LearnerStatus

log = logging.getLogger("fleetrl.metrics")


class _LearnerCollector:
    def __init__(self, snapshot: Callable[[], LearnerStatus]):
        self.snapshot = snapshot
        self.ingest_rate = RateMeter(min_interval_s=0.5)  # scrapes closer than that keep the last rate

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        ing = s["ingest"]

        def gauge(name: str, doc: str, value: float) -> Metric:
            return GaugeMetricFamily(f"fleetrl_learner_{name}", doc, value=float(value))

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(f"fleetrl_learner_{name}", doc, value=float(value))

        yield gauge("buffer_rows", "transitions in the replay buffer", s["buffer_rows"])
        yield counter("episodes", "episodes stored", s["episodes"])
        yield gauge("policy_version", "latest published policy version", s["policy_version"])
        yield counter("updates", "gradient updates (learner steps)", s["updates"])
        yield gauge("updates_per_second", "learner steps per second", s["updates_per_s"])
        yield counter("ingest_chunks", "chunks made durable", ing["chunks"])
        yield counter("ingest_rows", "transitions made durable", ing["rows"])
        yield counter("ingest_duplicates", "resent chunks recognised and dropped", ing["duplicates"])
        yield gauge("ingest_rows_per_second", "transitions made durable per second", self.ingest_rate.update(ing["rows"]))
        yield gauge("robots_linked", "robots with a live link", len(s["robots"]))
        rej = CounterMetricFamily("fleetrl_learner_rejections", "links refused, by reason code", labels=["code"])
        for code, n in sorted(s.get("rejections", {}).items()):
            rej.add_metric([code], float(n))
        yield rej
        yield gauge("trainer_failed", "1 if the trainer thread died", int(bool(s.get("trainer_error"))))
        yield counter("publish_failures", "policy publishes whose write failed (robots stay on the previous one)",
                      s.get("publish_failures", 0))
        storage = s.get("storage", {})
        yield counter("segment_write_failures", "buffer segment writes that failed (disk full: robots held)",
                      storage.get("write_failures", 0))
        yield gauge("storage_holding", "1 while buffer writes fail and robots are told to hold",
                    int(bool(storage.get("holding"))))
        # learning: is the fleet getting better, and what is the learner doing
        success = s.get("success_rate")
        if success is not None:  # unknown before the first episode ends: no sample, not a 0
            yield gauge("success_rate", "share of the recent episodes (the last 50) that succeeded", success)
        mean_return = s.get("mean_return")
        if mean_return is not None:
            yield gauge("mean_return", "mean summed reward of the recent episodes (the last 50)", mean_return)
        losses = GaugeMetricFamily("fleetrl_learner_loss", "the trainer's last reported losses and statistics, by name "
                                   "(critic_loss, actor_loss, alpha, ...; bc_loss for bc and hg_dagger; flow_loss "
                                   "for a flow policy)", labels=["name"])
        for name, v in sorted(s.get("losses", {}).items()):
            losses.add_metric([name], float(v))
        yield losses
        by_robot = GaugeMetricFamily("fleetrl_learner_robot_rows", "transitions stored from each robot (in the buffer, "
                                     "across restarts)", labels=["robot_id"])
        for rid, n in sorted(s.get("rows_by_robot", {}).items()):
            by_robot.add_metric([rid], float(n))
        yield by_robot
        yield from _group_families(s.get("groups", {}))
        device = s.get("learner_device")
        if device:
            yield InfoMetricFamily("fleetrl_learner_device", "where the trainer trains (cpu, cuda:0, ...)",
                                   value={"device": device})


def _group_families(groups: dict[str, GroupStatus]) -> Iterator[Metric]:
    """Each embodiment group's own figures, labelled ``group`` (the unlabelled families above are the first
    group's learner figures and the run's totals, as before groups)."""
    def family(name: str, doc: str, counter: bool = False) -> GaugeMetricFamily | CounterMetricFamily:
        cls = CounterMetricFamily if counter else GaugeMetricFamily
        return cls(f"fleetrl_learner_group_{name}", doc, labels=["group"])

    rows = family("buffer_rows", "transitions in the group's replay buffer")
    episodes = family("episodes", "episodes stored in the group's buffer", counter=True)
    version = family("policy_version", "the group's latest published policy version")
    updates = family("updates", "the group's gradient updates", counter=True)
    rate = family("updates_per_second", "the group's learner steps per second")
    linked = family("robots_linked", "robots linked to the group now")
    success = family("success_rate", "share of the group's recent episodes (the last 50) that succeeded")
    mean_return = family("mean_return", "mean summed reward of the group's recent episodes (the last 50)")
    losses = GaugeMetricFamily("fleetrl_learner_group_loss", "the group's trainer's last losses, by name",
                               labels=["group", "name"])
    for name, g in sorted(groups.items()):
        rows.add_metric([name], float(g["buffer_rows"]))
        episodes.add_metric([name], float(g["episodes"]))
        version.add_metric([name], float(g["policy_version"]))
        updates.add_metric([name], float(g["updates"]))
        rate.add_metric([name], float(g["updates_per_s"]))
        linked.add_metric([name], float(len(g["robots"])))
        if g["success_rate"] is not None:
            success.add_metric([name], float(g["success_rate"]))
        if g["mean_return"] is not None:
            mean_return.add_metric([name], float(g["mean_return"]))
        for loss, v in sorted(g["losses"].items()):
            losses.add_metric([name, loss], float(v))
    yield from (rows, episodes, version, updates, rate, linked, success, mean_return, losses)


class _InferenceCollector:
    """The policy server's figures (:class:`cloud.policy_server.PolicyServer`): requests/s from the counter,
    p50/p99 from the latency histogram, batch sizes, refusals by reason."""

    def __init__(self, server: Any):
        self.server = server

    def collect(self) -> Iterator[Metric]:
        s = self.server
        yield CounterMetricFamily("fleetrl_learner_inference_requests", "act requests from robots (policy.where = "
                                  "\"cloud\"), answered or refused", value=float(s.requests))
        yield CounterMetricFamily("fleetrl_learner_inference_served", "act requests answered with an action chunk",
                                  value=float(s.served))
        refused = CounterMetricFamily("fleetrl_learner_inference_refusals", "act requests refused, by reason code",
                                      labels=["code"])
        for code, n in sorted(s.refusals.items()):
            refused.add_metric([code], float(n))
        yield refused
        frames = CounterMetricFamily("fleetrl_learner_inference_camera_frames", "camera frames in act requests, by "
                                     "camera field", labels=["camera"])
        for cam, n in sorted(s.camera_frames.items()):
            frames.add_metric([cam], float(n))
        yield frames
        yield CounterMetricFamily("fleetrl_learner_inference_camera_bytes", "camera frame bytes in act requests "
                                  "(decompressed)", value=float(s.camera_bytes))
        for name, doc, h in (("inference_latency_seconds", "request arrival to its chunk queued on the link", s.latency),
                             ("inference_batch_size", "requests per forward pass", s.batch)):
            buckets = [(f"{b:g}", float(c)) for b, c in zip(h.buckets, h.counts)] + [("+Inf", float(h.n))]
            yield HistogramMetricFamily(f"fleetrl_learner_{name}", doc, buckets=buckets, sum_value=h.total)


async def start_metrics(snapshot: Callable[[], LearnerStatus], cfg: MetricsConfig,
                        inference: Any = None) -> tuple[web.AppRunner, str] | None:
    """Serve ``GET /metrics``; None (with a warning) if disabled or the port is taken: never fatal.
    ``inference``: the policy server, whose figures join the learner's."""
    if not cfg.enabled:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LearnerCollector(snapshot))  # type: ignore[arg-type]
    if inference is not None:
        registry.register(_InferenceCollector(inference))  # type: ignore[arg-type]
    started = await start_metrics_listener(lambda: generate_latest(registry), cfg.host, cfg.port)
    if started is not None:
        log.info("event=metrics_listening url=%s", started[1])
    return started
