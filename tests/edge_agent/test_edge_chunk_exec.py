"""The robot's action-chunk executor (sans-I/O) with hand-built chunks: the seam is continuous within
its tolerance, each on_late choice does what it says, stale chunks are dropped, and it all is counted."""

from __future__ import annotations

import numpy as np
import pytest

from shared.chunk_exec import ChunkExecutor

P = 0.02  # 50 Hz


def chunk(value: float | np.ndarray, h: int = 10, a: int = 2) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(np.float32)
    return np.full((h, a), value, np.float32)


def run_sync(ex: ChunkExecutor, ticks: int, plan) -> list[np.ndarray]:
    """A local policy: every request is answered at once with ``plan(tick)``."""
    out = []
    for t in range(ticks):
        rid = ex.request(t, t * P)
        if rid is not None:
            assert ex.receive(rid, t, plan(t), 3, t, t * P)
        out.append(ex.act(t).action)
    return out


@pytest.mark.parametrize("blend", [0, 1, 2, 4])
def test_the_seam_between_disagreeing_chunks_is_crossfaded_within_tolerance(blend):
    ex = ChunkExecutor(2, horizon=10, overlap=3, blend_steps=blend, period_s=P)
    # Each chunk plans a constant action, alternating 0 and 1: the worst disagreement at every seam.
    n = iter(range(100))
    acts = run_sync(ex, 60, lambda t: chunk(float(next(n) % 2)))
    jumps = np.abs(np.diff(np.stack(acts), axis=0)).max()
    tolerance = 1.0 / (blend + 1) + 1e-6
    assert jumps <= tolerance
    assert ex.counters.blended == (ex.counters.chunks - 1 if blend else 0)
    assert ex.counters.late_ticks == 0 and ex.counters.start_ticks == 0


def test_smooth_plans_stay_smooth_across_the_seam():
    """A ramp planned twice (each chunk continues the same trajectory) is executed as the ramp."""
    ex = ChunkExecutor(1, horizon=10, overlap=2, blend_steps=3, period_s=P)
    acts = run_sync(ex, 40, lambda t: (np.arange(t, t + 10, dtype=np.float32) / 100)[:, None])
    assert np.allclose(np.concatenate(acts), np.arange(40) / 100, atol=1e-6)


def test_a_cloud_chunk_lands_a_round_trip_later_and_is_played_from_where_the_robot_is():
    ex = ChunkExecutor(1, horizon=10, overlap=2, blend_steps=0, period_s=P)
    sent: dict[int, int] = {}
    executed = []
    for t in range(80):
        for rid, start in list(sent.items()):
            if t - start == 3:  # a 3-tick round trip
                ex.receive(rid, start, (np.arange(start, start + 10, dtype=np.float32) / 100)[:, None], 1, t, t * P)
                del sent[rid]
        rid = ex.request(t, t * P)
        if rid is not None:
            sent[rid] = t
        executed.append(ex.act(t))
    # The first chunk needs a round trip (start ticks); after that no tick is late: the lead hides it.
    assert ex.counters.start_ticks == 3 and ex.counters.late_ticks == 0 and ex.counters.lost == 0
    assert ex.lead >= 4
    assert ex.counters.as_dict()["policy_version"] == 1  # the chunks' (served) version, in status.json
    steady = executed[3:]
    assert all(abs(s.action[0] - t / 100) < 1e-6 for s, t in zip(steady, range(3, 80)))
    assert executed[3].chunk_index == 3  # the round trip used the first three


@pytest.mark.parametrize("on_late", ["hold", "zero", "finish"])
def test_a_lost_chunk_takes_the_configured_safe_action_then_resumes(on_late):
    zero = np.array([-0.25], np.float32)  # zero velocity in policy units (robot bounds not symmetric)
    ex = ChunkExecutor(1, horizon=10, overlap=4, blend_steps=0, on_late=on_late, timeout_s=0.15, period_s=P,
                       zero_action=zero, max_inflight=1)
    rid = ex.request(0, 0.0)
    ex.receive(rid, 0, np.linspace(0.1, 1.0, 10, dtype=np.float32)[:, None], 5, 0, 0.0)
    steps = [ex.act(t) for t in range(6)]  # 0.1 .. 0.6
    lost_rid = ex.request(6, 6 * P)  # 4 left: the next request goes out ... and never comes back
    assert lost_rid is not None
    for t in range(6, 20):
        new = ex.request(t, t * P)
        assert new is None or t * P - 6 * P > 0.15  # a new request only once the old one timed out
        steps.append(ex.act(t))
    assert ex.counters.lost == 1
    got = [float(s.action[0]) for s in steps]
    # Timed out at t = 14 (0.28 s > 0.12 + 0.15); the chunk (ticks 0..9) ran out at t = 10 already.
    assert got[:6] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    if on_late == "zero":
        assert got[10:] == pytest.approx([-0.25] * 10)
    else:  # hold and finish: the chunk's last action, held
        assert got[10:] == pytest.approx([1.0] * 10)
    assert all(s.late and s.chunk_index == -1 for s in steps[10:])
    assert ex.counters.late_ticks == 10
    # The late answer to the lost request is stale; the fresh request is answered and acting resumes.
    assert not ex.receive(lost_rid, 6, chunk(0.0, 10, 1), 5, 20, 20 * P)
    assert ex.counters.stale == 1
    rid = ex.pending
    assert rid is not None
    assert ex.receive(rid, 14, chunk(0.3, 10, 1), 6, 20, 20 * P)
    s = ex.act(20)
    assert s.action[0] == pytest.approx(0.3) and s.version == 6 and s.chunk_index == 6 and not s.late


@pytest.mark.parametrize("on_late", ["hold", "zero", "finish"])
def test_a_timeout_mid_chunk_stops_it_unless_finish(on_late):
    ex = ChunkExecutor(1, horizon=20, overlap=18, blend_steps=0, on_late=on_late, timeout_s=0.05, period_s=P)
    rid = ex.request(0, 0.0)
    ex.receive(rid, 0, np.linspace(0.05, 1.0, 20, dtype=np.float32)[:, None], 1, 0, 0.0)
    acts = []
    for t in range(12):
        ex.request(t, t * P)  # the second request (tick 2) is never answered: lost at tick 5
        acts.append(ex.act(t))
    assert ex.counters.lost >= 1
    if on_late == "finish":
        assert not any(a.late for a in acts)  # the chunk plays on
    else:
        assert acts[5].late and acts[5].action[0] == pytest.approx(0.0 if on_late == "zero" else 0.25)


def test_stale_out_of_order_and_past_chunks_are_dropped_and_counted():
    ex = ChunkExecutor(1, horizon=5, overlap=1, blend_steps=0, timeout_s=1.0, period_s=P)
    rid = ex.request(0, 0.0)
    assert not ex.receive(rid + 1, 0, chunk(0.5, 5, 1), 1, 0, 0.0)  # not the pending request
    assert not ex.receive(rid, 3, chunk(0.5, 5, 1), 1, 0, 0.0)  # not its tick
    assert ex.pending == rid
    assert not ex.receive(rid, 0, chunk(0.5, 5, 1), 1, 7, 0.14)  # all its actions are in the past
    assert ex.counters.stale == 3 and ex.counters.chunks == 0 and ex.pending is None
    assert not ex.receive(rid, 0, chunk(0.5, 5, 1), 1, 7, 0.14)  # a duplicate
    assert ex.counters.stale == 4


def test_a_refusal_is_counted_by_reason_and_the_next_request_waits():
    ex = ChunkExecutor(1, horizon=10, overlap=3, blend_steps=0, period_s=P)
    rid = ex.request(0, 0.0)
    ex.refused(rid, "rate_limited", 0)
    assert ex.act(0).late and ex.counters.refused["rate_limited"] == 1
    assert ex.request(1, P) is None and ex.request(2, 2 * P) is None
    rid = ex.request(3, 3 * P)
    assert rid is not None
    assert ex.counters.as_dict()["refused"] == 1
    ex.refused(rid, "latency_budget", 3)  # a one-off: asked again at once
    assert ex.request(3, 3 * P) is not None and ex.counters.refused["latency_budget"] == 1


def test_a_new_episode_starts_clean():
    ex = ChunkExecutor(1, horizon=10, overlap=2, blend_steps=2, period_s=P)
    rid = ex.request(0, 0.0)
    ex.receive(rid, 0, chunk(0.7, 10, 1), 1, 0, 0.0)
    ex.act(0)
    ex.reset()
    s = ex.act(1)
    assert s.late and s.action[0] == 0.0 and ex.counters.start_ticks == 1 and ex.counters.late_ticks == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="on_late"):
        ChunkExecutor(1, horizon=10, on_late="panic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="horizon"):
        ChunkExecutor(1, horizon=0)
