"""A policy that plans one step (the Gaussian and CNN policies) served from the cloud: each answer is
one action for the tick of its observation, and it lands a round trip later. The executor plays it from
the tick it lands until a newer answer replaces it, rather than dropping it as all in the past."""

from __future__ import annotations

import numpy as np
import pytest

from shared.chunk_exec import ChunkExecutor

P = 0.02  # 50 Hz


def drive(ex: ChunkExecutor, ticks: int, rtt: int, lost_from: int | None = None) -> list:
    """The control loop's order per tick: answers landing now, a request, the action. Each answer is the
    single action ``start / 1000`` (which observation it answered is visible in what is executed)."""
    out: dict[int, list[tuple[int, int]]] = {}
    steps = []
    for t in range(ticks):
        for rid, start in out.pop(t, []):
            ex.receive(rid, start, np.array([[start / 1000]], np.float32), 1, t, t * P)
        rid = ex.request(t, t * P)
        if rid is not None and (lost_from is None or t < lost_from):
            out.setdefault(t + rtt, []).append((rid, t))
        steps.append(ex.act(t))
    return steps


@pytest.mark.parametrize("horizon", [1, 10])
def test_single_actions_are_played_a_round_trip_late_and_held_until_the_next(horizon):
    ex = ChunkExecutor(1, horizon, overlap=0, blend_steps=0, period_s=P, timeout_s=0.5, max_inflight=3)
    steps = drive(ex, 200, rtt=3)
    c = ex.counters
    assert c.stale == 0 and c.chunks > 150  # none dropped; with a horizon of 10 configured it still asks often
    first = next(i for i, s in enumerate(steps) if not s.late)
    assert first == 3 and c.start_ticks == 3 and c.late_ticks == 0
    for t in range(first + 10, 200):  # steady: each tick runs the newest answer, at most a few ticks old
        s = steps[t]
        assert s.chunk_index == 0 and not s.late
        age = t - round(float(s.action[0]) * 1000)
        assert 3 <= age <= 3 + ex.gap, (t, age)


def test_a_held_single_action_stops_when_a_newer_request_is_lost():
    ex = ChunkExecutor(1, 1, overlap=0, blend_steps=0, on_late="zero", period_s=P, timeout_s=0.1, max_inflight=2)
    steps = drive(ex, 60, rtt=2, lost_from=30)
    assert not any(s.late for s in steps[5:30])
    # Requests from tick 30 on are never answered: the last answer is held only until the first of them
    # times out (0.1 s = 5 ticks), then the safe action runs.
    tail = steps[30:]
    assert tail[0].late is False
    first_safe = next(i for i, s in enumerate(tail) if s.late)
    assert first_safe <= 8 and all(s.late and float(s.action[0]) == 0.0 for s in tail[first_safe:])
    assert ex.counters.lost >= 1
