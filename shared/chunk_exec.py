"""Action-chunk execution on the robot, sans-I/O: which action each control tick executes when a
policy answers with chunks of ``horizon`` actions, and when to ask for the next chunk.

A plain class with the tick index and the time passed in (no threads, sockets or clocks), so
the same executor serves a chunked policy on the robot (the request is answered at once), the
RL-Co evaluation that steps the twin in the learner's process (``cloud.rlco.evaluate``), and
one served from the cloud (the answer comes a round trip later, or not at all), and tests
drive it with hand-built chunks.

The rules:

- A chunk answers a request made at tick ``s`` with the observation of tick ``s``: its action
  ``i`` is for tick ``s + i``. One that arrives at tick ``k`` is played from index ``k - s``
  (the round trip used the first ones up), so the robot never acts on a plan older than it is.
- Up to ``max_inflight`` requests are out at once, matched to their answers by request id.
  The next request goes out while the newest plan (the chunk playing, or the newest request
  still out, which will plan ``horizon`` ticks from its own tick) has ``lead`` actions left,
  ``lead = max(overlap, round trip in ticks + 1 + blend_steps)`` (the slowest of the recent
  round trips; at most ``horizon - 1``), without waiting for the answers still out. So requests
  go out every ``horizon - lead`` ticks whatever the round trip: a round trip up to
  ``horizon - 1 - blend_steps`` ticks is hidden (one request at a time hides half of that: the
  next could only leave once the previous came back), and when one answer is slow the next
  request, already out, covers for it. A busy learner is not asked harder, though: a request
  it refused as over its latency budget or limits, or one lost, halves how many may be out
  (down to one), and each answer adds back ``1/window`` (up to ``max_inflight``), as TCP's
  congestion window does, so pipelining degrades to one request at a time while the learner
  cannot keep up.
- A chunk of one action (a policy that plans a single step, as the Gaussian and CNN policies do) is
  played from the tick it arrives, a round trip after its observation as any remote controller
  acts, and held until a newer answer replaces it; the lost-request rule below bounds how long.
  The robot then asks as often as ``gap`` allows (its ``horizon`` counts as 1).
- Answers may come out of order: the newest plan by the tick of its observation wins. A chunk
  older than (or as old as) the one playing is *stale* and dropped, as is one that answers no
  request out (a late answer to a lost request, a duplicate, an earlier episode's) or whose
  actions all lie in the past.
- At the seam the robot moves from what it executed to the new plan over ``B = blend_steps``
  ticks: the difference between the last executed action and the new plan fades out linearly,
  ``1/(B+1)`` of it per tick, so with a disagreement of ``d`` the per-tick change at the seam
  is at most ``d/(B+1)`` plus the plan's own change. A newer chunk arriving mid-seam starts
  its seam from what was executed, so the bound holds however closely chunks follow each
  other. A chunk that comes after the old one ran out fades in from the action held meanwhile.
- A tick with no action left (the chunk ran out, the next is late) is a *late tick*: it takes
  the safe action ``on_late`` names: ``hold`` takes the robot's hold action for this tick when
  the caller gives one (``act(tick, hold)``: a position-controlled robot holds where it is now,
  which changes every tick; a velocity- or force-controlled one holds with the zero action),
  else the fixed ``hold_action``, else repeats the last executed action; ``zero`` sends the
  zero action (zero velocity in robot units, clamped); ``finish`` holds too. ``hold`` is a
  callable, called only on a tick that needs it, so the caller pays for nothing otherwise.
- A request unanswered after ``timeout_s`` is *lost*: if the plan playing is older than it,
  ``hold`` and ``zero`` stop playing that plan at once and take their safe action (it is
  older than the timeout allows); ``finish`` plays it to its end, then holds. A new request
  goes out at once, so the robot resumes as soon as the link does.
- A refused request (the learner said why: rate limit, latency budget, no policy) counts by
  reason; the next request waits ``max(1, overlap)`` ticks so a refusing learner is not
  asked on every tick (after ``latency_budget``, a one-off, it goes out at once).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from shared.protocol.inference import LATENCY_BUDGET, RATE_LIMITED, TOO_MANY_INFLIGHT

OnLate = Literal["hold", "zero", "finish"]
ON_LATE: tuple[OnLate, ...] = ("hold", "zero", "finish")
RTT_WINDOW = 32  # round trips remembered for the lead (the slowest of them counts)
MAX_ID = 2**32  # request ids wrap here (shared.protocol.inference.MAX_ID + 1)
Hold = Callable[[], "np.ndarray | None"]  # this tick's hold action (policy units), or None: the executor's own


@dataclass(frozen=True)
class ChunkStep:
    """What one tick executes: an action in the policy's [-1, 1], the version that planned it,
    its index in its chunk (-1: a safe action, no chunk had one), and whether it was late."""

    action: np.ndarray
    version: int
    chunk_index: int
    late: bool = False


@dataclass
class ChunkCounters:
    """What an operator reads in the robot's status (``chunks.*``)."""

    requests: int = 0  # requests sent
    chunks: int = 0  # chunks accepted
    late_ticks: int = 0  # ticks mid-episode with no action from a chunk (the safe action ran)
    start_ticks: int = 0  # ticks at an episode's start before its first chunk arrived (the safe action ran)
    lost: int = 0  # requests unanswered within the timeout
    stale: int = 0  # chunks dropped: late answers, duplicates, or all in the past
    blended: int = 0  # seams crossfaded
    refused: Counter[str] = field(default_factory=Counter)  # refusals by reason code
    policy_version: int = 0  # the version that planned the latest chunk taken (cloud: the served one, not the robot's)
    rtt_s: float = 0.0  # the latest round trip
    rtts: deque[float] = field(default_factory=lambda: deque(maxlen=2000))  # recent round trips, for p50/p99

    def as_dict(self) -> dict[str, float | int]:
        d: dict[str, float | int] = {k: getattr(self, k) for k in ("requests", "chunks", "late_ticks", "start_ticks",
                                                                   "lost", "stale", "blended", "policy_version")}
        d["refused"] = sum(self.refused.values())
        d["rtt_ms"] = round(self.rtt_s * 1e3, 2)
        recent = sorted(self.rtts)
        for name, q in (("rtt_p50_ms", 0.5), ("rtt_p99_ms", 0.99)):
            d[name] = round(recent[min(len(recent) - 1, int(q * len(recent)))] * 1e3, 2) if recent else 0.0
        return d


@dataclass
class _Plan:
    start: int  # the tick its action 0 is for
    actions: np.ndarray  # [H, A], policy units
    version: int

    @property
    def single(self) -> bool:
        """One action: a policy that plans one step. It is held until a newer plan replaces it."""
        return len(self.actions) == 1

    def covers(self, tick: int) -> bool:
        return self.start <= tick and (self.single or tick < self.start + len(self.actions))

    def index(self, tick: int) -> int:
        return 0 if self.single else tick - self.start

    @property
    def end(self) -> int:
        """The first tick it has no action for."""
        return self.start + len(self.actions)


@dataclass(frozen=True)
class _Request:
    start: int  # the tick of its observation
    sent: float  # when it went out (the caller's clock)


class ChunkExecutor:
    def __init__(self, action_dim: int, horizon: int, overlap: int = 2, blend_steps: int = 2, on_late: OnLate = "hold",
                 timeout_s: float = 0.25, period_s: float = 0.02, zero_action: np.ndarray | None = None,
                 hold_action: np.ndarray | None = None, max_inflight: int = 3):
        if horizon < 1 or not 0 <= overlap < max(horizon, 1) + 1 or blend_steps < 0 or timeout_s <= 0 \
                or max_inflight < 1:
            raise ValueError(f"chunk settings out of range: horizon={horizon} overlap={overlap} "
                             f"blend_steps={blend_steps} timeout_s={timeout_s} max_inflight={max_inflight}")
        if on_late not in ON_LATE:
            raise ValueError(f"on_late must be one of {', '.join(ON_LATE)}, got {on_late!r}")
        self.action_dim, self.horizon, self.overlap, self.blend_steps = action_dim, horizon, overlap, blend_steps
        self.on_late, self.timeout_s, self.period_s, self.max_inflight = on_late, timeout_s, period_s, max_inflight
        self.zero_action = np.zeros(action_dim, np.float32) if zero_action is None else np.asarray(zero_action, np.float32)
        self.hold_action = None if hold_action is None else np.asarray(hold_action, np.float32)
        self.counters = ChunkCounters()
        self._next_id = 1
        self._pending: dict[int, _Request] = {}  # request id -> request, oldest first
        self._plan: _Plan | None = None
        self._blend_from = 0  # the first tick of the current seam
        self._residual: np.ndarray | None = None  # executed minus new plan at the seam: fades out over blend_steps
        self._last: np.ndarray | None = None  # the last executed action
        self._last_version = 0
        self._quiet_until = -1  # no request before this tick (after a refusal)
        self._rtts: deque[float] = deque(maxlen=RTT_WINDOW)
        self._started = False  # a chunk arrived in this episode
        self._window = float(max_inflight)  # requests that may be out now: halved when the learner struggles
        self._answer_len = horizon  # actions per answer, as the policy last answered (at most horizon)

    # ---------------------------------------------------------------- requests

    @property
    def lead(self) -> int:
        """Ask for the next chunk while this many actions are left (see the module docstring)."""
        horizon = min(self.horizon, self._answer_len)
        if horizon <= 1:
            return 0
        if not self._rtts and self.max_inflight > 1:
            return horizon - 1  # no round trip measured yet: assume the worst, ask as early as allowed
        rtt_ticks = self._ticks(max(self._rtts)) + 1 if self._rtts and self.period_s > 0 else 1
        return min(max(self.overlap, rtt_ticks + self.blend_steps), horizon - 1)

    @property
    def gap(self) -> int:
        """Ticks between two requests out at once: a typical round trip (the median of the recent ones)
        shared among ``max_inflight`` requests, so they go out evenly spread rather than in a burst
        that then leaves a hole as long as the round trip."""
        if self.window == 1 or not self._rtts or self.period_s <= 0:
            return 1
        return max(1, math.ceil(self._ticks(sorted(self._rtts)[len(self._rtts) // 2]) / self.window))

    def _ticks(self, seconds: float) -> int:
        return math.ceil(seconds / self.period_s - 1e-6)  # an answer arriving on a tick is taken at that tick

    @property
    def pending(self) -> int | None:
        """The id of the newest request awaiting its chunk, if any."""
        return next(reversed(self._pending), None) if self._pending else None

    @property
    def window(self) -> int:
        """Requests that may be out now (at most ``max_inflight``; fewer while the learner is struggling)."""
        return max(1, int(self._window))

    @property
    def in_flight(self) -> int:
        """Requests out, awaiting their chunks."""
        return len(self._pending)

    def why_late(self, tick: int, now: float) -> dict[str, float | int]:
        """What an operator needs to see about a late tick: how the robot was asking (lead, window,
        requests out and the age of the oldest) against the round trips it had measured."""
        recent = sorted(self._rtts)
        oldest = min((r.sent for r in self._pending.values()), default=now)
        return {"tick": tick, "lead": self.lead, "window": self.window, "in_flight": len(self._pending),
                "oldest_out_ms": round((now - oldest) * 1e3, 1),
                "rtt_max_ms": round(recent[-1] * 1e3, 1) if recent else 0.0,
                "rtt_median_ms": round(recent[len(recent) // 2] * 1e3, 1) if recent else 0.0}

    def _planned_end(self) -> int | None:
        """The first tick the newest plan has no action for, counting requests still out as the plans
        they will bring (``horizon`` ticks from their own); None with no plan and nothing out."""
        ends = [r.start + min(self.horizon, self._answer_len) for r in self._pending.values()]
        if self._plan is not None:
            ends.append(self._plan.end)
        return max(ends) if ends else None

    def request(self, tick: int, now: float) -> int | None:
        """Call once per tick before :meth:`act`: the id of a request to send now with this tick's
        observation (the caller sends it, tagged with ``tick``), or None. Also ends timed-out requests."""
        for rid, req in list(self._pending.items()):
            if now - req.sent <= self.timeout_s:
                continue
            del self._pending[rid]
            self.counters.lost += 1
            self._back_off()
            plan = self._plan
            if self.on_late != "finish" and plan is not None and plan.start < req.start:
                self._plan, self._residual = None, None  # too old to keep playing: the safe action from now
        if tick < self._quiet_until or len(self._pending) >= self.window:
            return None
        if any(r.start == tick for r in self._pending.values()):
            return None  # this tick's observation is already out
        end = self._planned_end()
        if end is not None and end - tick > self.lead:
            return None
        if self._pending and tick - max(r.start for r in self._pending.values()) < self.gap:
            return None
        rid = self._next_id
        self._next_id = rid % (MAX_ID - 1) + 1
        self._pending[rid] = _Request(tick, now)
        self.counters.requests += 1
        return rid

    def receive(self, request_id: int, start: int, actions: np.ndarray, version: int, tick: int, now: float) -> bool:
        """A chunk arrived before tick ``tick`` runs; True if taken, False if stale (dropped)."""
        req = self._pending.get(request_id)
        if req is None or req.start != start:
            self.counters.stale += 1
            return False
        del self._pending[request_id]
        self._window = min(float(self.max_inflight), self._window + 1.0 / self._window)
        self._rtts.append(max(0.0, now - req.sent))
        self.counters.rtt_s = self._rtts[-1]
        self.counters.rtts.append(self._rtts[-1])
        acts = np.asarray(actions, np.float32).reshape(-1, self.action_dim)
        self._answer_len = max(1, min(self.horizon, len(acts)))  # a policy of shorter chunks: ask as often as it needs
        new = _Plan(start, acts, version)
        old = self._plan
        if not new.covers(tick) or old is not None and new.start <= old.start:
            self.counters.stale += 1  # all in the past, or overtaken by a newer plan (answers out of order)
            return False
        self._residual = None
        if self.blend_steps and self._last is not None:  # something was executed before: move from it
            self._residual, self._blend_from = self._last - _before(new, tick), tick
            self.counters.blended += 1
        self._plan = new
        self._started = True
        self.counters.chunks += 1
        self.counters.policy_version = version
        return True

    def refused(self, request_id: int, code: str, tick: int) -> None:
        """The request was refused (``code``: :data:`shared.protocol.inference.REFUSALS`)."""
        if self._pending.pop(request_id, None) is None:
            self.counters.stale += 1
            return
        self.counters.refused[code] += 1
        if code in (LATENCY_BUDGET, RATE_LIMITED, TOO_MANY_INFLIGHT):  # the learner cannot keep up: ask less
            self._back_off()
        # Too slow this once (the learner was busy): ask again at once with a fresher observation. Any other
        # reason (rate, in-flight, no policy, link down) lasts a while: wait a little before asking again.
        self._quiet_until = tick if code == LATENCY_BUDGET else tick + max(1, self.overlap)

    def _back_off(self) -> None:
        self._window = max(1.0, self._window / 2)

    def reset(self) -> None:
        """A new episode: no plan, no action to hold; the answers to requests still out will be stale."""
        self._plan = None
        self._residual = None
        self._pending.clear()
        self._last = None
        self._started = False
        self._quiet_until = -1

    # ---------------------------------------------------------------- acting

    def act(self, tick: int, hold: Hold | None = None) -> ChunkStep:
        """The action for ``tick`` (ticks only move forward). ``hold``: the robot's hold action now, in
        policy units, asked only if this tick is late and ``on_late`` holds (None: no driver-specific hold)."""
        plan = self._plan
        if plan is None or not plan.covers(tick):
            return self._safe(hold)
        i = plan.index(tick)
        a = plan.actions[i]
        if self._residual is not None:
            j = tick - self._blend_from
            if 0 <= j < self.blend_steps:  # the seam: the difference to what was executed fades out
                a = a + self._residual * ((self.blend_steps - j) / (self.blend_steps + 1))
            else:
                self._residual = None
        a = np.asarray(a, np.float32)
        self._last, self._last_version = a, plan.version
        return ChunkStep(a, plan.version, i)

    def _safe(self, hold: Hold | None) -> ChunkStep:
        """The tick has no action from a chunk: the configured safe action, counted."""
        if self._started:
            self.counters.late_ticks += 1
        else:
            self.counters.start_ticks += 1
        now = None if self.on_late == "zero" or hold is None else hold()
        if self.on_late == "zero":
            a = self.zero_action
        elif now is not None:
            a = np.asarray(now, np.float32)
            if a.shape != (self.action_dim,):
                raise ValueError(f"the hold action has shape {a.shape}, the action ({self.action_dim},)")
        elif self.hold_action is not None:
            a = self.hold_action
        elif self._last is not None:
            a = self._last
        else:
            a = self.zero_action
        self._plan = None
        self._residual = None
        self._last = a.copy()  # what the robot now does: a later chunk fades in from it
        return ChunkStep(a.copy(), self._last_version, -1, late=True)


def _before(plan: _Plan, tick: int) -> np.ndarray:
    """The plan's action for the tick before ``tick``: its own, or (a chunk planned at ``tick``, as a
    policy on the robot answers at once) extrapolated back from its next two, so that a seam between
    plans that agree continues their motion instead of stalling it."""
    acts: np.ndarray = plan.actions
    if plan.covers(tick - 1):
        out: np.ndarray = acts[plan.index(tick - 1)]
        return out
    i = plan.index(tick)
    out = 2 * acts[i] - acts[i + 1] if i + 1 < len(acts) else acts[i]
    return out
