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
- The next request goes out while the current chunk still has ``lead`` actions left,
  ``lead = max(overlap, round trip in ticks + 1 + blend_steps)`` (the slowest of the recent
  round trips; at most ``horizon - 1``), so a chunk normally lands with ``blend_steps`` of the
  current one still to play: the round trip is hidden and there is room for the seam.
- At the seam the old plan and the new one are crossfaded over ``B = blend_steps`` ticks
  (linear weights ``1/(B+1) .. B/(B+1)``; fewer ticks if less of the old plan is left), so the
  action does not jump: with plans that disagree by ``d`` the per-tick change at the seam is
  at most ``d/(B+1)`` plus the plans' own change. A chunk that comes after the old one ran
  out fades in from the action held meanwhile.
- A tick with no action left (the chunk ran out, the next is late) is a *late tick*: it takes
  the safe action ``on_late`` names: ``hold`` repeats the last executed action (or the
  robot's hold action, for position-controlled robots), ``zero`` sends the zero action
  (zero velocity in robot units, clamped), ``finish`` holds too.
- A request unanswered after ``timeout_s`` is *lost*: ``hold`` and ``zero`` stop playing the
  current chunk at once and take their safe action (its plan is older than the timeout
  allows); ``finish`` plays the current chunk to its end, then holds. A new request goes
  out at once, so the robot resumes as soon as the link does.
- A chunk that answers no pending request (a late answer to a lost request, a duplicate,
  an earlier request's) or whose actions all lie in the past is *stale* and dropped.
- A refused request (the learner said why: rate limit, latency budget, no policy) counts by
  reason; the next request waits ``max(1, overlap)`` ticks so a refusing learner is not
  asked on every tick (after ``latency_budget``, a one-off, it goes out at once).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shared.protocol.inference import LATENCY_BUDGET

OnLate = Literal["hold", "zero", "finish"]
ON_LATE: tuple[OnLate, ...] = ("hold", "zero", "finish")
RTT_WINDOW = 32  # round trips remembered for the lead (the slowest of them counts)
MAX_ID = 2**32  # request ids wrap here (shared.protocol.inference.MAX_ID + 1)


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
    rtt_s: float = 0.0  # the latest round trip
    rtts: deque[float] = field(default_factory=lambda: deque(maxlen=2000))  # recent round trips, for p50/p99

    def as_dict(self) -> dict[str, float | int]:
        d: dict[str, float | int] = {k: getattr(self, k) for k in
                                     ("requests", "chunks", "late_ticks", "start_ticks", "lost", "stale", "blended")}
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

    def covers(self, tick: int) -> bool:
        return self.start <= tick < self.start + len(self.actions)

    def remaining(self, tick: int) -> int:
        return max(0, self.start + len(self.actions) - tick)


class ChunkExecutor:
    def __init__(self, action_dim: int, horizon: int, overlap: int = 2, blend_steps: int = 2, on_late: OnLate = "hold",
                 timeout_s: float = 0.25, period_s: float = 0.02, zero_action: np.ndarray | None = None,
                 hold_action: np.ndarray | None = None):
        if horizon < 1 or not 0 <= overlap < max(horizon, 1) + 1 or blend_steps < 0 or timeout_s <= 0:
            raise ValueError(f"chunk settings out of range: horizon={horizon} overlap={overlap} "
                             f"blend_steps={blend_steps} timeout_s={timeout_s}")
        if on_late not in ON_LATE:
            raise ValueError(f"on_late must be one of {', '.join(ON_LATE)}, got {on_late!r}")
        self.action_dim, self.horizon, self.overlap, self.blend_steps = action_dim, horizon, overlap, blend_steps
        self.on_late, self.timeout_s, self.period_s = on_late, timeout_s, period_s
        self.zero_action = np.zeros(action_dim, np.float32) if zero_action is None else np.asarray(zero_action, np.float32)
        self.hold_action = None if hold_action is None else np.asarray(hold_action, np.float32)
        self.counters = ChunkCounters()
        self._next_id = 1
        self._pending: tuple[int, int, float] | None = None  # (request id, tick, sent at)
        self._plan: _Plan | None = None
        self._old: _Plan | None = None  # the plan being faded out, during a seam
        self._blend_from = 0  # the first tick of the seam
        self._blending = False
        self._blend_len = 0  # ticks of the current seam: blend_steps, or what was left of the old plan
        self._held = np.zeros(action_dim, np.float32)  # the action at the seam, when the old plan has ended
        self._last: np.ndarray | None = None  # the last executed action
        self._last_version = 0
        self._quiet_until = -1  # no request before this tick (after a refusal)
        self._rtts: deque[float] = deque(maxlen=RTT_WINDOW)
        self._started = False  # a chunk arrived in this episode

    # ---------------------------------------------------------------- requests

    @property
    def lead(self) -> int:
        """Ask for the next chunk while this many actions are left (see the module docstring)."""
        rtt_ticks = math.ceil(max(self._rtts) / self.period_s) + 1 if self._rtts and self.period_s > 0 else 1
        return min(max(self.overlap, rtt_ticks + self.blend_steps), self.horizon - 1) if self.horizon > 1 else 0

    @property
    def pending(self) -> int | None:
        """The id of the request awaiting its chunk, if any."""
        return self._pending[0] if self._pending else None

    def request(self, tick: int, now: float) -> int | None:
        """Call once per tick before :meth:`act`: the id of a request to send now with this tick's
        observation (the caller sends it, tagged with ``tick``), or None. Also ends a timed-out request."""
        if self._pending is not None:
            if now - self._pending[2] <= self.timeout_s:
                return None
            self._pending = None
            self.counters.lost += 1
            if self.on_late != "finish":  # its plan is too old to keep playing: the safe action from now
                self._plan = self._old = None
                self._blending = False
        if tick < self._quiet_until:
            return None
        plan = self._plan
        if plan is not None and plan.remaining(tick) > self.lead:
            return None
        rid = self._next_id
        self._next_id = rid % (MAX_ID - 1) + 1
        self._pending = (rid, tick, now)
        self.counters.requests += 1
        return rid

    def receive(self, request_id: int, start: int, actions: np.ndarray, version: int, tick: int, now: float) -> bool:
        """A chunk arrived before tick ``tick`` runs; True if taken, False if stale (dropped)."""
        pending = self._pending
        if pending is None or pending[0] != request_id or pending[1] != start:
            self.counters.stale += 1
            return False
        self._pending = None
        self._rtts.append(max(0.0, now - pending[2]))
        self.counters.rtt_s = self._rtts[-1]
        self.counters.rtts.append(self._rtts[-1])
        acts = np.asarray(actions, np.float32).reshape(-1, self.action_dim)
        new = _Plan(start, acts, version)
        if not new.covers(tick):
            self.counters.stale += 1
            return False
        old = self._plan
        self._blending = False
        if self.blend_steps and self._last is not None:  # something was executed before: fade from it
            if old is not None and old.covers(tick):  # fade out the old plan over what is left of it
                self._old, self._blend_len = old, min(self.blend_steps, old.remaining(tick))
            else:  # it ran out (this chunk is late): fade from the action held meanwhile
                self._old, self._held, self._blend_len = None, self._last, self.blend_steps
            self._blend_from, self._blending = tick, True
            self.counters.blended += 1
        self._plan = new
        self._started = True
        self.counters.chunks += 1
        return True

    def refused(self, request_id: int, code: str, tick: int) -> None:
        """The request was refused (``code``: :data:`shared.protocol.inference.REFUSALS`)."""
        if self._pending is None or self._pending[0] != request_id:
            self.counters.stale += 1
            return
        self._pending = None
        self.counters.refused[code] += 1
        # Too slow this once (the learner was busy): ask again at once with a fresher observation. Any other
        # reason (rate, in-flight, no policy, link down) lasts a while: wait a little before asking again.
        self._quiet_until = tick if code == LATENCY_BUDGET else tick + max(1, self.overlap)

    def reset(self) -> None:
        """A new episode: no plan, no action to hold; an unanswered request's chunk will be stale."""
        self._plan = self._old = None
        self._blending = False
        self._pending = None
        self._last = None
        self._started = False
        self._quiet_until = -1

    # ---------------------------------------------------------------- acting

    def act(self, tick: int) -> ChunkStep:
        """The action for ``tick`` (ticks only move forward)."""
        plan = self._plan
        if plan is None or not plan.covers(tick):
            return self._safe()
        i = tick - plan.start
        a = plan.actions[i]
        j = tick - self._blend_from
        if self._blending and 0 <= j < self._blend_len:
            old = self._old
            prev = old.actions[tick - old.start] if old is not None else self._held
            w = (j + 1) / (self._blend_len + 1)
            a = (1.0 - w) * prev + w * a
        elif self._blending:
            self._blending, self._old = False, None
        a = np.asarray(a, np.float32)
        self._last, self._last_version = a, plan.version
        return ChunkStep(a, plan.version, i)

    def _safe(self) -> ChunkStep:
        """The tick has no action from a chunk: the configured safe action, counted."""
        if self._started:
            self.counters.late_ticks += 1
        else:
            self.counters.start_ticks += 1
        if self.on_late == "zero":
            a = self.zero_action
        elif self.hold_action is not None:
            a = self.hold_action
        elif self._last is not None:
            a = self._last
        else:
            a = self.zero_action
        self._plan = self._old = None
        self._blending = False
        self._last = a.copy()  # what the robot now does: a later chunk fades in from it
        return ChunkStep(a.copy(), self._last_version, -1, late=True)
