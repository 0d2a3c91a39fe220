"""Where the control loop's action chunks come from: the robot's own chunked policy, or the learner's
policy server over the link. Either way the :class:`~shared.chunk_exec.ChunkExecutor` decides
what each tick executes and when to ask; this holds the executor and moves requests and answers.

Cloud: a request is handed to the link process without waiting (``send`` posts it to the control
process's event loop, which writes it to the link process's socket); answers come back on that
event loop and wait in :attr:`ChunkSource.inbox` (a deque: appends and pops are atomic) until the
loop's next tick takes them. So the control loop never blocks on the network; a lost answer is the
executor's business (a timeout, a safe action).

Robot: a request is answered at once from the current policy's ``act_chunk_batch``; a policy
without chunks (horizon 1, the Gaussian ones) is not routed here at all (:meth:`active`).
"""

from __future__ import annotations

import base64
import logging
import time
from collections import deque
from typing import Any, Callable, Mapping

import numpy as np

from shared.actions import ActionScale

from shared.chunk_exec import ChunkExecutor, ChunkStep, Hold
from shared.lograte import LogLimiter
from shared.protocol.inference import BAD_OBSERVATION
from .policy_holder import LoadedPolicy, PolicyHolder
from .status import ChunkReport

log = logging.getLogger("fleetrl.chunks")
_LATE = LogLimiter(5.0)  # a late tick is counted in status; its context is logged at most every 5 s

# (request id, tick, state field -> base64 float32, camera field -> [[H, W, C], base64 uint8]) -> posted to the link
Send = Callable[[int, int, dict[str, str], dict[str, list[Any]]], Any]


def encode_obs(obs: Mapping[str, np.ndarray], fields: list[str]) -> dict[str, str]:
    """State fields as base64 float32 (exact, and about 4x smaller than JSON floats over the socketpair)."""
    return {f: base64.b64encode(np.ascontiguousarray(obs[f], "<f4").tobytes()).decode() for f in fields}


def encode_cameras(obs: Mapping[str, np.ndarray], cameras: list[str]) -> dict[str, list[Any]]:
    """Camera frames (uint8 HxWxC) as their shape and base64 bytes; the link process compresses them."""
    out: dict[str, list[Any]] = {}
    for c in cameras:
        a = np.ascontiguousarray(obs[c], np.uint8)
        out[c] = [list(a.shape), base64.b64encode(a.tobytes()).decode()]
    return out


def decode_actions(b64: str, horizon: int, action_dim: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), "<f4").reshape(horizon, action_dim)


class ChunkSource:
    def __init__(self, executor: ChunkExecutor, where: str, fields: list[str], send: Send | None = None,
                 holder: PolicyHolder | None = None, deterministic: bool = False, cameras: list[str] | None = None):
        if where == "cloud" and send is None or where == "robot" and holder is None:
            raise ValueError(f"a {where} chunk source needs {'send' if where == 'cloud' else 'a policy holder'}")
        self.executor, self.where, self.fields = executor, where, fields
        self.send, self.holder, self.deterministic = send, holder, deterministic
        # Cameras: the spec's all go with the first request; an answer names the ones its policy read, and
        # only those go from then on (a state policy: none). A bad_observation refusal (the served policy
        # changed and reads another) sends them all again.
        self.all_cameras = list(cameras or [])
        self.cameras = list(self.all_cameras)
        # ("chunk", id, start, version, actions [H, A], arrived, cameras read) or ("refused", id, code): from the event loop
        self.inbox: deque[tuple[Any, ...]] = deque()

    @property
    def counters(self) -> dict[str, float | int]:
        return self.executor.counters.as_dict()

    def active(self, policy: LoadedPolicy | None) -> bool:
        """Whether this tick's action comes from chunks: always in the cloud, and on the robot for a chunked policy."""
        return self.where == "cloud" or (policy is not None and getattr(policy, "horizon", 1) > 1)

    # ---------------------------------------------------------------- from the link (any thread)

    def chunk_arrived(self, request_id: int, start: int, version: int, actions: np.ndarray,
                      cameras: list[str] | None = None) -> None:
        """``cameras``: the camera fields the served policy read (None: keep sending what we send)."""
        self.inbox.append(("chunk", request_id, start, version, actions, time.monotonic(), cameras))  # arrival: the rtt

    def refused(self, request_id: int, code: str) -> None:
        self.inbox.append(("refused", request_id, code))

    # ---------------------------------------------------------------- the control thread

    def reset(self) -> None:
        """A new episode: nothing of the last one's plan carries over."""
        self.executor.reset()

    def step(self, obs: Mapping[str, np.ndarray], tick: int, now: float, policy: LoadedPolicy | None,
             hold: Hold | None = None) -> ChunkStep:
        """This tick's action (policy units), asking for the next chunk when the executor says so.
        ``hold``: the robot's hold action now (policy units), asked only on a late tick that holds."""
        ex = self.executor
        self._take(tick, now)
        rid = ex.request(tick, now)
        if rid is not None:
            if self.where == "cloud":
                assert self.send is not None
                self.send(rid, tick, encode_obs(obs, self.fields), encode_cameras(obs, self.cameras))
            elif policy is not None:
                acts = np.asarray(policy.act_chunk_batch([obs], deterministic=self.deterministic))[0]  # type: ignore[attr-defined]
                ex.receive(rid, tick, acts[: ex.horizon], policy.version, tick, now)
            else:
                ex.refused(rid, "no_policy", tick)
        late = ex.counters.late_ticks
        step = ex.act(tick, hold)
        if ex.counters.late_ticks > late:
            ctx = ex.why_late(tick, now)
            _LATE.log(log, logging.WARNING, ("late", id(self)), "event=chunk_late action=%s %s", ex.on_late,
                      " ".join(f"{k}={v}" for k, v in ctx.items()))
        return step

    def _take(self, tick: int, now: float) -> None:
        ex = self.executor
        while self.inbox:
            item = self.inbox.popleft()
            if item[0] == "chunk":
                _, rid, start, version, actions, arrived, cameras = item
                ex.receive(rid, start, actions[: ex.horizon], version, tick, arrived)
                if cameras is not None:
                    self.cameras = [c for c in self.all_cameras if c in cameras]
            else:
                ex.refused(item[1], item[2], tick)
                if item[2] == BAD_OBSERVATION:
                    self.cameras = list(self.all_cameras)


def build(policy_cfg: Any, rate_hz: float, action_low: Any, action_high: Any, clamp: Callable[[np.ndarray], np.ndarray],
          fields: list[str], send: Send | None, holder: PolicyHolder, deterministic: bool,
          cameras: list[str] | None = None) -> ChunkSource:
    """The source an agent's ``[policy]`` table describes (``shared.config_inference.AgentPolicyConfig``).

    The zero action is zero in the robot's units, through its clamp (0 may lie outside its bounds),
    expressed in the policy's [-1, 1] like every action the executor handles."""
    scale = ActionScale(action_low, action_high)
    zero = scale.normalise(clamp(np.zeros(len(scale.low), np.float32))).astype(np.float32)
    ex = ChunkExecutor(len(scale.low), policy_cfg.horizon, policy_cfg.overlap, policy_cfg.blend_steps,
                       policy_cfg.on_late, policy_cfg.request_timeout_ms / 1000,
                       1.0 / rate_hz if rate_hz > 0 else 0.0, zero_action=zero, max_inflight=policy_cfg.max_inflight)
    return ChunkSource(ex, policy_cfg.where, fields, send if policy_cfg.where == "cloud" else None, holder, deterministic,
                       cameras)


def report(source: ChunkSource | None) -> ChunkReport:
    """The counters as the robot's link report carries them (flat scalars)."""
    c = source.executor.counters if source is not None else None
    return {
        "chunks_requests": c.requests if c else 0, "chunks_chunks": c.chunks if c else 0,
        "chunks_late_ticks": c.late_ticks if c else 0, "chunks_start_ticks": c.start_ticks if c else 0,
        "chunks_lost": c.lost if c else 0, "chunks_stale": c.stale if c else 0, "chunks_blended": c.blended if c else 0,
        "chunks_refused": sum(c.refused.values()) if c else 0, "chunks_rtt_ms": round(c.rtt_s * 1e3, 2) if c else 0.0,
    }
