"""The chunk executor with more than one request out (sans-I/O, hand-built chunks and round trips): a
round trip longer than one request at a time can hide is hidden, answers out of order are matched by id
and the newest plan wins, a lost request in the middle costs nothing when a newer one answers, and the
seam stays within its tolerance however closely chunks follow each other."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from shared.chunk_exec import ChunkExecutor

P = 0.02  # 50 Hz
H = 10

Rtt = Callable[[int, int], "int | None"]  # (request number, its tick) -> round trip in ticks, None: lost


def fleet_tick(ex: ChunkExecutor, ticks: int, rtt: Rtt, plan: Callable[[int], np.ndarray],
               reverse_same_tick: bool = False) -> tuple[list, int]:
    """Drive ``ex`` like the control loop does, the link answering each request ``rtt`` ticks later (in
    the order they land; answers landing on the same tick in reverse order of sending if asked).
    Returns the steps executed and the most requests ever out at once."""
    out: dict[int, list[tuple[int, int]]] = {}  # landing tick -> [(id, start)]
    steps, most, n = [], 0, 0
    for t in range(ticks):
        landing = out.pop(t, [])
        for rid, start in (reversed(landing) if reverse_same_tick else landing):
            ex.receive(rid, start, plan(start), 1, t, t * P)
        rid = ex.request(t, t * P)
        if rid is not None:
            r = rtt(n, t)
            n += 1
            if r is not None:
                out.setdefault(t + r, []).append((rid, t))
        most = max(most, ex.in_flight)
        steps.append(ex.act(t))
    return steps, most


def ramp(start: int) -> np.ndarray:
    return (np.arange(start, start + H, dtype=np.float32) / 1000)[:, None]


@pytest.mark.parametrize("rtt_ticks,inflight", [(6, 2), (7, 3), (8, 4)])
def test_a_round_trip_longer_than_one_request_can_hide_is_hidden_with_more_out(rtt_ticks, inflight):
    """One request at a time hides at most H / 2 ticks (the next leaves when the previous lands); with
    several out, spread a round trip apart, up to H - 2 with enough of them."""
    warm = 5 * H  # the first round trips fill the pipeline (the round trip is not known yet)
    one = ChunkExecutor(1, H, overlap=2, blend_steps=2, period_s=P, timeout_s=1.0, max_inflight=1)
    steps, _ = fleet_tick(one, 300, lambda n, t: rtt_ticks, ramp)
    assert sum(s.late for s in steps[warm:]) > 0
    many = ChunkExecutor(1, H, overlap=2, blend_steps=2, period_s=P, timeout_s=1.0, max_inflight=inflight)
    steps, most = fleet_tick(many, 300, lambda n, t: rtt_ticks, ramp)
    c = many.counters
    assert not any(s.late for s in steps[warm:]) and c.lost == 0 and c.start_ticks == rtt_ticks
    assert most == inflight
    # The ramp every chunk continues is executed as it is: the seams do not bend it.
    assert all(abs(s.action[0] - t / 1000) < 1e-5 for t, s in enumerate(steps[warm:], warm))


def test_never_more_requests_out_than_allowed():
    ex = ChunkExecutor(1, H, overlap=8, blend_steps=0, period_s=P, timeout_s=1.0, max_inflight=2)
    _, most = fleet_tick(ex, 200, lambda n, t: 9, ramp)  # asks early and waits long: would want more
    assert most == 2


def test_answers_out_of_order_the_newest_plan_wins_and_the_older_is_stale():
    slow, fast = 20, 21  # request 20 takes 8 ticks, 21 (sent after it) 2: 21's answer overtakes 20's
    ex = ChunkExecutor(1, H, overlap=2, blend_steps=0, period_s=P, timeout_s=1.0, max_inflight=3)
    steps, _ = fleet_tick(ex, 200, lambda n, t: {slow: 8, fast: 2}.get(n, 6),
                          lambda start: np.full((H, 1), start, np.float32))  # each plan says its own tick
    planned_at = [float(s.action[0]) for s in steps if not s.late]
    assert planned_at == sorted(planned_at)  # never back to an older plan
    assert ex.counters.stale == 1 and ex.counters.lost == 0  # the overtaken answer, dropped
    assert not any(s.late for s in steps[3 * H:])


def test_a_spike_on_one_round_trip_is_covered_by_the_next_request_already_out():
    spike = 20  # one request takes 9 ticks instead of 4
    late = {}
    for inflight in (1, 3):
        ex = ChunkExecutor(1, H, overlap=2, blend_steps=2, period_s=P, timeout_s=1.0, max_inflight=inflight)
        steps, _ = fleet_tick(ex, 200, lambda n, t: 9 if n == spike else 4, ramp)
        assert ex.counters.requests > spike + 5
        late[inflight] = sum(s.late for s in steps[3 * H:])
    assert late[1] > 0 and late[3] == 0


def test_a_chunk_answering_another_tick_than_its_request_or_a_duplicate_is_stale():
    ex = ChunkExecutor(1, H, period_s=P, max_inflight=3)
    a = ex.request(0, 0.0)
    b = ex.request(1, P)  # no round trip known yet: ask early, a is still out
    assert a is not None and b is not None and ex.in_flight == 2
    assert not ex.receive(b, 0, np.zeros((H, 1), np.float32), 1, 2, 2 * P)  # b was asked at tick 1
    assert ex.counters.stale == 1 and ex.in_flight == 2
    assert ex.receive(b, 1, np.zeros((H, 1), np.float32), 1, 2, 2 * P)
    assert not ex.receive(b, 1, np.zeros((H, 1), np.float32), 1, 2, 2 * P)  # a duplicate
    assert not ex.receive(a, 0, np.zeros((H, 1), np.float32), 1, 3, 3 * P)  # older than the plan playing
    assert ex.counters.stale == 3 and ex.counters.chunks == 1 and ex.in_flight == 0


@pytest.mark.parametrize("on_late", ["hold", "zero", "finish"])
def test_a_lost_request_in_the_middle_costs_nothing_when_a_newer_one_answers(on_late):
    lost = set()

    def rtt(n: int, t: int) -> int | None:
        if n == 20:  # one request in the middle never comes back
            lost.add(t)
            return None
        return 6

    ex = ChunkExecutor(1, H, overlap=2, blend_steps=2, on_late=on_late, period_s=P, timeout_s=0.3, max_inflight=3)
    steps, _ = fleet_tick(ex, 200, rtt, ramp)
    assert lost and min(lost) > 3 * H  # past the warm-up
    assert ex.counters.lost == 1 and ex.counters.stale == 0
    assert not any(s.late for s in steps[3 * H:])
    assert all(abs(s.action[0] - t / 1000) < 1e-6 for t, s in enumerate(steps[3 * H:], 3 * H))


def test_when_every_request_is_lost_the_safe_action_runs_then_acting_resumes():
    cut = range(60, 100)  # requests sent in these ticks are lost
    ex = ChunkExecutor(1, H, overlap=2, blend_steps=2, on_late="zero", period_s=P, timeout_s=0.2, max_inflight=3,
                       zero_action=np.array([-0.5], np.float32))
    steps, _ = fleet_tick(ex, 200, lambda n, t: None if t in cut else 4, ramp)
    c = ex.counters
    assert c.lost >= 2 and c.late_ticks > 0
    late = [t for t, s in enumerate(steps) if s.late and t > 10]
    assert all(steps[t].action[0] == pytest.approx(-0.5) for t in late)
    assert max(late) < 120 and not steps[-1].late  # acting resumed once the link did


@pytest.mark.parametrize("blend", [1, 2, 4])
def test_the_seam_stays_within_tolerance_with_chunks_landing_out_of_order_every_tick(blend):
    """Worst case for the seam: each chunk plans a constant 0 or 1 at random, round trips jitter (answers
    overtake each other), chunks land more often than blend_steps apart, and some are lost."""
    rng = np.random.default_rng(blend)
    values = rng.integers(0, 2, 10_000).astype(np.float32)
    ex = ChunkExecutor(2, H, overlap=8, blend_steps=blend, period_s=P, timeout_s=0.2, max_inflight=4)
    steps, most = fleet_tick(ex, 600, lambda n, t: None if rng.random() < 0.05 else int(rng.integers(1, 7)),
                             lambda start: np.full((H, 2), values[start], np.float32), reverse_same_tick=True)
    acts = np.stack([s.action for s in steps])
    jumps = np.abs(np.diff(acts, axis=0)).max()
    assert jumps <= 1.0 / (blend + 1) + 1e-6
    c = ex.counters
    assert most == 4 and c.stale > 0 and c.lost > 0 and c.blended > 100  # the case was exercised
    assert np.all((acts >= 0) & (acts <= 1))


def test_max_inflight_is_checked():
    with pytest.raises(ValueError, match="max_inflight"):
        ChunkExecutor(1, H, max_inflight=0)


def test_a_struggling_learner_is_asked_with_fewer_requests_out_until_it_keeps_up():
    """Refusals for the latency budget (or lost requests) halve how many may be out, down to one; answers
    open the window again, up to max_inflight."""
    ex = ChunkExecutor(1, H, overlap=2, blend_steps=2, period_s=P, timeout_s=1.0, max_inflight=4)
    assert ex.window == 4
    t = 0
    for expected in (2, 1, 1):
        rid = ex.request(t, t * P)
        assert rid is not None
        ex.refused(rid, "latency_budget", t)
        assert ex.window == expected
        t += 1
    assert ex.counters.refused["latency_budget"] == 3
    steps, most = fleet_tick(ex, 400, lambda n, t: 7, ramp)  # a learner that keeps up again (7-tick round trip)
    assert ex.window == 4 and most == 4
    fresh = ChunkExecutor(1, H, period_s=P, max_inflight=4)
    rid = fresh.request(0, 0.0)
    assert rid is not None
    fresh.refused(rid, "no_policy", 0)  # not a sign of load: the window stays
    assert fresh.window == 4 and fresh.counters.refused["no_policy"] == 1
