"""The control loop thread against the real MuJoCo Fetch robot."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from edge_agent.control_loop import ControlLoop
from edge_agent.policy_holder import PolicyHolder
from edge_agent.recorder import PendingChunk, Recorder
from hal_drivers import registry
from harness.waits import thread_parked, wait_for
from harness.sinks import ChunkSink
from shared.config import ControlConfig
from shared.policy import Actor
from shared.weights import decode_weights, encode_weights


@pytest.fixture
def make_robot():
    robots = []

    def _make(**opts):
        r = registry.create("mujoco_fetch", {"seed": 0, **opts})
        robots.append(r)
        return r

    yield _make
    for r in robots:
        r.close()




def _holder(robot) -> PolicyHolder:
    spec = robot.describe().episode_spec()
    return PolicyHolder({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)


def _loop(robot, sink, chunk_steps=7, **cfg) -> ControlLoop:
    return ControlLoop(robot, _holder(robot), Recorder(chunk_steps, sink), ControlConfig(**cfg))


def _episodes(chunks: list[PendingChunk]) -> dict[str, list[PendingChunk]]:
    eps: dict[str, list[PendingChunk]] = {}
    for c in chunks:
        eps.setdefault(c.episode_id, []).append(c)
    return eps


def test_chunks_cover_every_step_once_with_right_boundaries(make_robot):
    robot = make_robot(max_episode_steps=20)
    sink = ChunkSink()
    loop = _loop(robot, sink, chunk_steps=7, rate_hz=0, max_episodes=2, seed=3)
    loop.start()
    loop.join(30)
    assert not loop.is_alive()
    assert loop.error is None
    assert (loop.episodes, loop.steps) == (2, 40)
    assert sink.threads == {"control-loop"}

    eps = _episodes(sink.chunks)
    assert len(eps) == 2
    # chunks of one episode arrive contiguously, in order
    runs = [c.episode_id for i, c in enumerate(sink.chunks) if i == 0 or c.episode_id != sink.chunks[i - 1].episode_id]
    assert len(runs) == len(set(runs)) == 2
    low = np.asarray(robot.describe().action_low)
    high = np.asarray(robot.describe().action_high)
    for chunks in eps.values():
        assert [len(c.steps) for c in chunks] == [7, 7, 6]  # split at chunk_steps, cut at episode end
        assert [c.episode_done for c in chunks] == [False, False, True]
        steps = [s for c in chunks for s in c.steps]
        assert [s.step for s in steps] == list(range(20))  # every step exactly once
        assert all(not (s.terminated or s.truncated) for s in steps[:-1])
        assert steps[-1].truncated or steps[-1].terminated
        for a, b in zip(steps, steps[1:]):
            for k in a.next_obs:
                np.testing.assert_array_equal(a.next_obs[k], b.obs[k])  # transitions chain
        acts = np.stack([s.action for s in steps])
        assert acts.shape == (20, 4)
        assert np.all(acts >= low) and np.all(acts <= high)
        assert acts.std() > 0.1  # random, not a constant
        assert all(s.policy_version == 0 for s in steps)
        assert all(np.isfinite(s.reward) for s in steps)
        assert chunks[-1].success == steps[-1].success
    assert sum(len(c.steps) for c in sink.chunks) == loop.steps


def test_chunk_steps_larger_than_episode_gives_one_chunk_per_episode(make_robot):
    robot = make_robot(max_episode_steps=12)
    sink = ChunkSink()
    loop = _loop(robot, sink, chunk_steps=50, rate_hz=0, max_episodes=3, seed=1)
    loop.start()
    loop.join(30)
    assert loop.error is None
    assert [len(c.steps) for c in sink.chunks] == [12, 12, 12]
    assert all(c.episode_done for c in sink.chunks)
    assert len({c.episode_id for c in sink.chunks}) == 3


def test_same_seed_gives_same_random_actions(make_robot):
    runs = []
    for _ in range(2):
        robot = make_robot(max_episode_steps=10)
        sink = ChunkSink()
        loop = _loop(robot, sink, chunk_steps=4, rate_hz=0, max_episodes=1, seed=7)
        loop.start()
        loop.join(30)
        runs.append(np.stack([s.action for c in sink.chunks for s in c.steps]))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_policy_actions_are_scaled_and_tagged_with_version(make_robot):
    robot = make_robot(max_episode_steps=10)
    sink = ChunkSink()
    loop = _loop(robot, sink, chunk_steps=5, rate_hz=0, max_episodes=2, random_steps=5, seed=0)
    actor = Actor(16, 4, hidden=(16, 16))
    blob = encode_weights(actor.state_dict(), 3, {"actor": actor.arch(), "obs_fields": ["observation", "achieved_goal", "desired_goal"]})
    loop.policy.swap(loop.policy.prepare(decode_weights(blob.data, blob.sha256, 1 << 30)))
    loop.start()
    loop.join(30)
    assert loop.error is None
    steps = [s for c in sink.chunks for s in c.steps]
    assert len(steps) == 20
    # random_steps are tagged with the version held at the time (here 3), like the policy's own steps
    assert all(s.policy_version == 3 for s in steps)
    acts = np.stack([s.action for s in steps])
    assert np.all(np.abs(acts) <= 1)


def _weights(loop: ControlLoop, version: int):
    actor = Actor(16, 4, hidden=(16, 16))
    blob = encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": ["observation", "achieved_goal", "desired_goal"]})
    return loop.policy.prepare(decode_weights(blob.data, blob.sha256, 1 << 30))


@pytest.mark.parametrize("sync", [True, False])
def test_synchronous_mode_acts_a_whole_episode_with_the_policy_it_started_with(make_robot, sync):
    """A version published mid-episode waits for the next episode in synchronous mode (an episode is
    on-policy for one version); an asynchronous robot takes it at the next tick."""
    robot = make_robot(max_episode_steps=10)
    sink = ChunkSink()
    loop = _loop(robot, sink, chunk_steps=10, rate_hz=0, max_episodes=2, seed=0, sync=sync, sync_timeout_s=5)
    loop.policy.swap(_weights(loop, 3))
    v4 = _weights(loop, 4)
    loop.heartbeat = lambda: loop.steps == 4 and loop.policy.swap(v4)  # on the control thread, mid-episode 1
    loop.start()
    loop.join(30)
    assert loop.error is None
    versions = [[s.policy_version for s in c.steps] for c in sink.chunks]
    if sync:
        assert versions == [[3] * 10, [4] * 10]
        assert loop.sync_wait_s < 1  # the newer policy was already there: no wait
    else:
        assert versions == [[3] * 5 + [4] * 5, [4] * 10]


def test_fixed_rate_and_jitter(make_robot):
    robot = make_robot(max_episode_steps=1000)
    sink = ChunkSink()
    loop = _loop(robot, sink, chunk_steps=25, rate_hz=100, max_episodes=0)
    loop.start()
    assert loop.running.wait(10)
    s0, t0 = loop.steps, time.monotonic()
    time.sleep(0.6)  # the measurement window for the rate under test, not a synchronisation
    s1, t1 = loop.steps, time.monotonic()
    loop.stop()
    loop.join(5)
    assert not loop.is_alive()
    assert loop.error is None
    rate = (s1 - s0) / (t1 - t0)
    assert 60 <= rate <= 130, rate
    j = loop.jitter()
    assert set(j) == {"p50_ms", "p99_ms", "max_ms"}
    assert all(math.isfinite(v) for v in j.values())
    assert j["p50_ms"] <= j["p99_ms"] <= j["max_ms"]
    assert j["p50_ms"] < 20, j  # late by under two periods at the median
    # the stop cut the running episode: every step went out, the last chunk is not a finished
    # episode, and its last step is marked truncated so the data has a clean episode end
    assert sum(len(c.steps) for c in sink.chunks) == loop.steps
    assert sink.chunks[-1].episode_done is False
    assert sink.chunks[-1].steps[-1].truncated is True


def test_jitter_without_a_rate_is_zero(make_robot):
    robot = make_robot(max_episode_steps=5)
    loop = _loop(robot, ChunkSink(), rate_hz=0, max_episodes=1)
    loop.start()
    loop.join(30)
    assert loop.jitter() == {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}


@pytest.mark.parametrize("rate_hz", [0, 20])
def test_stop_is_prompt_and_cuts_the_partial_episode(make_robot, rate_hz):
    robot = make_robot(max_episode_steps=100_000)
    sink = ChunkSink()
    loop = _loop(robot, sink, chunk_steps=1000, rate_hz=rate_hz, max_episodes=0)
    loop.start()
    assert loop.running.wait(10)
    wait_for(lambda: loop.steps >= 3, 10, "a few steps of the running episode")
    t = time.monotonic()
    loop.stop()
    loop.join(5)
    took = time.monotonic() - t
    assert not loop.is_alive()
    # prompt = well under one tick of a slow loop plus scheduling on a loaded 2-core box (idle: a few ms);
    # an unstoppable loop would run its 100k-step episode and fail join(5) above
    assert took < 2.0, took
    assert loop.error is None
    assert loop.episodes == 0
    assert len(sink.chunks) >= 1
    last = sink.chunks[-1]
    assert last.episode_done is False and last.success is False
    steps = [s for c in sink.chunks for s in c.steps]
    assert len(steps) == loop.steps > 0
    assert [s.step for s in steps] == list(range(len(steps)))
    assert len({c.episode_id for c in sink.chunks}) == 1


def test_a_crashing_robot_is_surfaced_and_recorded_steps_still_go_out(make_robot):
    robot = make_robot(max_episode_steps=1000)
    real_step = robot.step
    calls = {"n": 0}

    def step(action):
        calls["n"] += 1
        if calls["n"] == 13:
            raise RuntimeError("driver fault")
        return real_step(action)

    robot.step = step  # the driver failing is the fault under test, not our code
    sink = ChunkSink()
    loop = _loop(robot, sink, chunk_steps=5, rate_hz=0, max_episodes=0)
    loop.start()
    loop.join(10)
    assert not loop.is_alive()
    assert isinstance(loop.error, RuntimeError)
    assert sum(len(c.steps) for c in sink.chunks) == 12
    assert sink.chunks[-1].episode_done is False


def test_no_new_episode_while_may_start_is_clear_and_stop_still_ends_it(make_robot):
    robot = make_robot(max_episode_steps=5)
    sink = ChunkSink()
    gate = threading.Event()  # clear: e.g. the spool is full
    loop = ControlLoop(robot, _holder(robot), Recorder(10, sink), ControlConfig(rate_hz=0, max_episodes=0), may_start=gate)
    loop.start()
    # parked on the gate: the loop looked at it and found it clear (its chance to start an episode)
    wait_for(lambda: loop.waiting_to_start and thread_parked(loop), 10, "the loop parked on the clear gate")
    assert loop.steps == 0
    gate.set()
    wait_for(lambda: loop.episodes >= 2, 10, "two episodes once the gate is set")
    gate.clear()  # the running episode finishes, no new one starts
    wait_for(lambda: loop.waiting_to_start and thread_parked(loop), 10, "the loop parked again after its episode")
    n = loop.steps
    assert n % 5 == 0
    assert thread_parked(loop) and loop.steps == n  # still parked: nothing can wake it but the gate or stop
    t = time.monotonic()
    loop.stop()
    loop.join(5)
    # generous for a loaded 2-core box (idle: a few ms); a stop that missed the parked loop fails join(5)
    assert not loop.is_alive() and time.monotonic() - t < 2.0
    assert loop.error is None
    assert sum(len(c.steps) for c in sink.chunks) == n
    assert all(c.episode_done for c in sink.chunks)
