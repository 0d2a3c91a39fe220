"""The policy server: answers robots' observations (ActRequest) with action chunks (ActChunk), for
robots whose config says ``policy.where = "cloud"``.

It rides the robot's own link: a request reaches it only through the gateway, on a link that
completed the authenticated handshake and whose hello offered ``cloud_policy``
(:mod:`shared.protocol.inference`), so there is no separate endpoint to secure. Like weights, chunks
go only to a link that proved itself (or to any on a loopback learner with ``server.auth = "open"``).

Requests from all robots are collected for up to ``batch_window_ms`` (or ``max_batch``) and run
through each group's current policy in one forward pass, in a worker thread of its own, so the
event loop (acks, other links) never waits for the network. Each robot is isolated: its own
request rate and in-flight limits, refused with a reason code, never affecting the others; and a
request that cannot be answered within ``latency_budget_ms`` of arriving is refused
(``latency_budget``) rather than served late: a robot acts on time or takes its safe action, it
never acts on an old plan it believes is new.

The policy is each group's latest published weights, or ``inference.weights`` (a local file, e.g.
a pretrained flow policy), on the learner's device. A newer published version is loaded in a
thread of its own while the one loaded keeps serving, and swapped in between two batches: robots
are never refused, nor answered late, because weights moved. A version that cannot be loaded is
logged and tried once; the one before it keeps serving, and status says which version serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from shared.config_inference import InferenceConfig
from shared.errors import FleetError, InvalidState
from shared.lograte import LogLimiter
from shared.observations import ImageShape, image_shapes, state_sizes
from shared.policy_runner import LoadedPolicy, load_policy
from shared.protocol import ActRequest, inference
from shared.protocol.stream import RateLimit
from shared.weights import decode_weights, load_weights_file

log = logging.getLogger("fleetrl.inference")
LOGS = LogLimiter(5.0)

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
MAX_PARAMS = 2_000_000_000  # a learner-side limit: its own published weights, or its operator's file
CONTROL = 0  # cloud.gateway.CONTROL: chunks overtake policy bytes


@dataclass
class _Pending:
    link: Any  # cloud.gateway.Link
    req: ActRequest
    arrived: float  # monotonic


class Histogram:
    """Cumulative bucket counts and a sum, as Prometheus wants them; plus recent values for p50/p99."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total, self.n = 0.0, 0
        self.recent: deque[float] = deque(maxlen=10_000)

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.total += v
        self.n += 1
        self.recent.append(v)

    def quantile(self, q: float) -> float | None:
        return float(np.quantile(np.asarray(self.recent), q)) if self.recent else None


class _Robot:
    """One robot's limits: a token bucket and a count of its unanswered requests."""

    def __init__(self, rate: float, now: float):
        self.bucket = RateLimit(rate, now)
        self.in_flight = 0


class PolicyServer:
    def __init__(self, cfg: InferenceConfig, device: torch.device, serve_open: bool,
                 max_params: int = MAX_PARAMS, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.device, self.serve_open, self.max_params = cfg, device, serve_open, max_params
        self.clock = clock
        self.requests = 0  # every request that reached the server
        self.served = 0  # answered with actions
        self.refusals: Counter[str] = Counter()
        self.camera_frames: Counter[str] = Counter()  # frames received, by camera field (what robots send)
        self.camera_bytes = 0  # their bytes, decompressed
        self.latency = Histogram(LATENCY_BUCKETS)  # arrival -> answer queued on the link, seconds
        self.batch = Histogram(tuple(float(b) for b in BATCH_BUCKETS))
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._robots: dict[str, _Robot] = {}
        self._policies: dict[int, LoadedPolicy] = {}  # id(group) -> loaded policy
        self._loading: set[int] = set()  # groups with a newer version loading in the background
        self._unusable: dict[int, int] = {}  # id(group) -> the published version that failed to load
        self._file_weights: Any = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="policy-server")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="policy-loader")  # never delays a batch

    # ---------------------------------------------------------------- from the gateway (event loop)

    def submit(self, link: Any, req: ActRequest) -> None:
        """A request from an authenticated link that offered inference (the gateway checked both).
        Never waits: over a limit it is refused at once; otherwise it joins the next batch."""
        self.requests += 1
        now = self.clock()
        for name, frame in req.cameras.items():
            self.camera_frames[name] += 1
            self.camera_bytes += len(frame.data)
        if not self.cfg.enabled:
            return self._refuse(link, req, inference.INFERENCE_DISABLED, "this learner does not serve inference "
                                "([inference] enabled = false)")
        if not (link.authenticated or self.serve_open):
            return self._refuse(link, req, inference.NO_POLICY, "an unauthenticated robot gets no actions")
        if req.refusal is not None:  # its camera frames do not fit the robot's spec or the byte limit
            return self._refuse(link, req, *req.refusal)
        robot = self._robots.get(link.robot_id)
        if robot is None:
            robot = self._robots[link.robot_id] = _Robot(self.cfg.max_requests_per_s, now)
        if robot.in_flight >= self.cfg.max_in_flight:
            return self._refuse(link, req, inference.TOO_MANY_INFLIGHT,
                                f"{robot.in_flight} requests unanswered (inference.max_in_flight)")
        if not robot.bucket.take(now):
            return self._refuse(link, req, inference.RATE_LIMITED,
                                f"over {self.cfg.max_requests_per_s:g} requests/s (inference.max_requests_per_s)")
        robot.in_flight += 1
        self._queue.append(_Pending(link, req, now))
        self._arrived.set()
        if len(self._queue) >= self.cfg.max_batch:
            self._full.set()

    def _refuse(self, link: Any, req: ActRequest, code: str, message: str) -> None:
        self.refusals[code] += 1
        LOGS.log(log, logging.INFO, ("refused", link.robot_id, code), "event=inference_refused robot_id=%s code=%s "
                 "message=%r", link.robot_id, code, message)
        try:
            link.outbox.put(CONTROL, link.conn.act_chunk(req.id, req.step, 0, code=code, message=message))
        except InvalidState:  # the link closed meanwhile
            pass

    # ---------------------------------------------------------------- the batcher

    async def run(self) -> None:
        """Forever: wait for a request, let others join for the batch window, serve them together."""
        window = self.cfg.batch_window_ms / 1000
        while True:
            await self._arrived.wait()
            if window > 0 and len(self._queue) < self.cfg.max_batch:
                try:
                    await asyncio.wait_for(self._full.wait(), window)
                except asyncio.TimeoutError:
                    pass
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.cfg.max_batch))]
            if not self._queue:
                self._arrived.clear()
            if len(self._queue) < self.cfg.max_batch:
                self._full.clear()
            if batch:
                await self._serve(batch)

    async def _serve(self, batch: list[_Pending]) -> None:
        by_group: dict[int, list[_Pending]] = {}
        for p in batch:
            by_group.setdefault(id(p.link.group), []).append(p)
        for items in by_group.values():
            try:
                await self._serve_group(items)
            finally:
                for p in items:
                    robot = self._robots.get(p.link.robot_id)
                    if robot is not None:
                        robot.in_flight = max(0, robot.in_flight - 1)

    async def _serve_group(self, items: list[_Pending]) -> None:
        budget = self.cfg.latency_budget_ms / 1000
        group = items[0].link.group
        try:
            policy = await self._policy_for(group)
        except FleetError as e:
            LOGS.log(log, logging.ERROR, ("policy_unusable", id(group)), "event=inference_policy_unusable group=%s "
                     "error=%r", getattr(group, "name", "?"), str(e))
            policy = None
        if policy is None:
            for p in items:
                self._refuse(p.link, p.req, inference.NO_POLICY, "no policy is published for this robot's group yet")
            return
        spec = group.buffer.spec
        sizes, shapes = (state_sizes(spec), image_shapes(spec)) if spec is not None else ({}, {})
        ready, obs = [], []
        for p in items:
            if self.clock() - p.arrived > budget:
                self._refuse(p.link, p.req, inference.LATENCY_BUDGET, "waited past inference.latency_budget_ms")
                continue
            o = _observation(p.req, policy.obs_fields, sizes, {c: shapes.get(c) for c in policy.image_fields})
            if isinstance(o, str):
                self._refuse(p.link, p.req, inference.BAD_OBSERVATION, o)
                continue
            ready.append(p)
            obs.append(o)
        if not ready:
            return
        self.batch.observe(float(len(ready)))
        try:
            chunks = await asyncio.get_running_loop().run_in_executor(self._worker, _act, policy, obs,
                                                                      self.cfg.deterministic)
        except Exception as e:  # noqa: BLE001 - a policy that raises refuses these requests, not the link
            LOGS.log(log, logging.ERROR, ("policy_failed",), "event=inference_failed error=%r", f"{type(e).__name__}: {e}")
            for p in ready:
                self._refuse(p.link, p.req, inference.SERVER_ERROR, f"the policy failed: {type(e).__name__}")
            return
        for p, actions in zip(ready, chunks):
            took = self.clock() - p.arrived
            if took > budget:
                self._refuse(p.link, p.req, inference.LATENCY_BUDGET, f"answer took {took * 1e3:.0f} ms, over "
                             "inference.latency_budget_ms: not served late")
                continue
            try:
                p.link.outbox.put(CONTROL, p.link.conn.act_chunk(p.req.id, p.req.step, policy.version, actions,
                                                                     cameras=policy.image_fields))
            except InvalidState:  # the link closed meanwhile
                continue
            self.served += 1
            self.latency.observe(took)

    async def _policy_for(self, group: Any) -> LoadedPolicy | None:
        """The group's policy: the configured file, or its latest published weights. Only the first load is
        waited for (there is nothing to serve before it); a newer version loads in the background."""
        key = id(group)
        loaded = self._policies.get(key)
        spec = group.buffer.spec
        if spec is None:
            return None
        loop = asyncio.get_running_loop()
        if self.cfg.weights is not None:
            if loaded is None:
                loaded = self._policies[key] = await loop.run_in_executor(self._loader, self._load_file, spec)
            return loaded
        blob = group.publisher.latest
        if blob is None or (loaded is not None and loaded.version >= blob.version):
            return loaded
        if loaded is None:
            loaded = self._policies[key] = await loop.run_in_executor(self._loader, self._load_blob, blob, spec)
            self._loaded(group, loaded)
        elif key not in self._loading and self._unusable.get(key) != blob.version:
            self._loading.add(key)
            loop.run_in_executor(self._loader, self._load_blob, blob, spec).add_done_callback(
                lambda f: self._reloaded(group, blob.version, f))
        return loaded

    def _reloaded(self, group: Any, version: int, done: "asyncio.Future[LoadedPolicy]") -> None:
        """A background load ended (on the event loop): swap the new policy in, or keep serving the old one."""
        key = id(group)
        self._loading.discard(key)
        if done.cancelled():
            return
        err = done.exception()
        if err is not None:
            self._unusable[key] = version
            old = self._policies.get(key)
            LOGS.log(log, logging.ERROR, ("policy_unusable", key), "event=inference_policy_unusable group=%s "
                     "version=%d serving=%s error=%r", getattr(group, "name", "?"), version,
                     old.version if old else None, f"{type(err).__name__}: {err}")
            return
        new = done.result()
        old = self._policies.get(key)
        if old is None or old.version < new.version:
            self._policies[key] = new
            self._unusable.pop(key, None)
            self._loaded(group, new)

    def _loaded(self, group: Any, policy: LoadedPolicy) -> None:
        log.info("event=inference_policy_loaded group=%s version=%d horizon=%d device=%s", group.name,
                 policy.version, policy.horizon, self.device)

    def _load_blob(self, blob: Any, spec: Any) -> LoadedPolicy:
        weights = decode_weights(blob.data, blob.sha256, 1 << 40)
        return load_policy(weights, state_sizes(spec), spec.action_dim, self.max_params, "inference",
                           image_fields=image_shapes(spec), device=self.device)

    def _load_file(self, spec: Any) -> LoadedPolicy:
        path = Path(self.cfg.weights or "")
        if self._file_weights is None:
            self._file_weights = load_weights_file(path, None, 1 << 40)
        policy = load_policy(self._file_weights, state_sizes(spec), spec.action_dim, self.max_params,
                             "inference.weights", image_fields=image_shapes(spec), device=self.device)
        log.info("event=inference_policy_loaded file=%s version=%d horizon=%d device=%s", path, policy.version,
                 policy.horizon, self.device)
        return policy

    def forget(self, robot_id: str) -> None:
        """A robot's link ended: its limits go with it (a relinked robot starts afresh)."""
        self._robots.pop(robot_id, None)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- figures

    def status(self) -> dict[str, Any]:
        p50, p99 = self.latency.quantile(0.5), self.latency.quantile(0.99)
        return {
            "enabled": self.cfg.enabled, "requests": self.requests, "served": self.served,
            "policy_versions": sorted(p.version for p in self._policies.values()),  # what serves, per group
            "unusable_versions": sorted(self._unusable.values()),  # published, refused by the loader, not served
            "refusals": dict(self.refusals), "batches": self.batch.n,
            "camera_frames": dict(self.camera_frames), "camera_bytes": self.camera_bytes,
            "mean_batch": round(self.batch.total / self.batch.n, 2) if self.batch.n else None,
            "max_batch_seen": max(self.batch.recent) if self.batch.recent else None,
            "latency_p50_ms": None if p50 is None else round(p50 * 1e3, 3),
            "latency_p99_ms": None if p99 is None else round(p99 * 1e3, 3),
        }


def _observation(req: ActRequest, fields: tuple[str, ...], sizes: dict[str, int],
                 cameras: Mapping[str, ImageShape | None] | None = None) -> dict[str, np.ndarray] | str:
    """The request's fields as arrays, checked against what the policy reads; a message if they do not fit.
    Camera frames arrive raw and of the robot's spec's shape (the connection checked them against its hello);
    here: each camera the policy reads is there, of the shape of the group's spec it was loaded for."""
    out = {}
    for f in fields:
        data = req.obs.get(f)
        if data is None:
            return f"observation lacks field {f!r} (the policy reads {list(fields)[:8]})"
        a = np.frombuffer(data, "<f4")
        want = sizes.get(f)
        if want is not None and a.size != want:
            return f"observation field {f!r} holds {a.size} floats, the robot's spec says {want}"
        out[f] = a
    for c, shape in (cameras or {}).items():
        frame = req.cameras.get(c)
        if frame is None:
            return f"observation lacks camera {c!r} (the policy reads cameras {list(cameras or {})[:8]})"
        if shape is not None and frame.shape != tuple(shape):
            return f"camera {c!r} is {'x'.join(map(str, frame.shape))}, the policy reads {'x'.join(map(str, shape))}"
        out[c] = np.frombuffer(frame.data, np.uint8).reshape(frame.shape)
    return out


def _act(policy: LoadedPolicy, obs: list[dict[str, np.ndarray]], deterministic: bool) -> np.ndarray:
    """[B, H, A] actions in [-1, 1] (worker thread). A policy without chunks answers chunks of one."""
    chunked = getattr(policy, "act_chunk_batch", None)
    if chunked is not None:
        out = np.asarray(chunked(obs, deterministic=deterministic), np.float32)
    else:
        out = np.asarray(policy.act_batch(obs, deterministic=deterministic), np.float32)[:, None, :]
    return np.clip(out, -1.0, 1.0)
