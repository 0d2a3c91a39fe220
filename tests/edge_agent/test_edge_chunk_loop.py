"""The control loop acting through action chunks: a flow policy on the robot (where = "robot": each
request answered at once from its act_chunk_batch) and a cloud source whose answers come from another
thread (where = "cloud"). Recorded steps carry their position in the chunk and the chunk's version."""

from __future__ import annotations

import threading

import numpy as np

from edge_agent import chunk_source
from edge_agent.control_loop import ControlLoop
from edge_agent.policy_holder import PolicyHolder
from edge_agent.recorder import Recorder
from hal_drivers import registry
from harness.sinks import ChunkSink
from shared.config import ControlConfig
from shared.config_inference import AgentPolicyConfig
from shared.observations import state_sizes
from shared.policy import FlowActor
from shared.policy_runner import load_policy
from shared.weights import decode_weights, encode_weights

FIELDS = ["position", "velocity", "goal"]


def _robot():
    return registry.create("point_mass", {"dims": 2, "seed": 1, "max_episode_steps": 40})


def _holder(robot, version: int = 5) -> PolicyHolder:
    spec = robot.describe().episode_spec()
    holder = PolicyHolder(state_sizes(spec), spec.action_dim)
    actor = FlowActor(6, 2, horizon=8, hidden=(16, 16), steps=2)
    blob = encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": FIELDS})
    holder.swap(load_policy(decode_weights(blob.data, None, 1 << 30), state_sizes(spec), 2, 10**7))
    return holder


def _source(robot, holder, send=None, **policy) -> chunk_source.ChunkSource:
    d = robot.describe()
    cfg = AgentPolicyConfig(**{"horizon": 8, "overlap": 2, "blend_steps": 2, **policy})
    return chunk_source.build(cfg, 0.0, d.action_low, d.action_high, robot.clamp, FIELDS, send, holder, True)


def test_a_chunked_policy_on_the_robot_is_executed_chunk_by_chunk_and_recorded_so():
    robot = _robot()
    holder = _holder(robot)
    sink = ChunkSink()
    src = _source(robot, holder)
    loop = ControlLoop(robot, holder, Recorder(50, sink), ControlConfig(rate_hz=0, max_episodes=2), chunks=src)
    loop.start()
    loop.join(30)
    assert loop.error is None and loop.episodes == 2
    steps = sink.steps
    assert len(steps) == 80
    idx = [s.chunk_index for s in steps]
    assert all(0 <= i < 8 for i in idx) and all(s.policy_version == 5 for s in steps)
    # Each episode starts a chunk at index 0; chunks are replaced with 2 + blend actions left (lead 4 of 8).
    assert idx[0] == 0 and idx[40] == 0 and max(idx) == 4
    c = src.executor.counters
    assert c.late_ticks == 0 and c.start_ticks == 0 and c.lost == 0 and c.chunks == c.requests
    assert c.blended == c.chunks - 2  # every seam but each episode's first chunk


def test_a_cloud_source_answered_from_another_thread_never_blocks_the_loop():
    robot = _robot()
    holder = _holder(robot, version=9)
    policy = holder.current
    asked: list[tuple[int, int, dict]] = []
    cond = threading.Condition()

    def send(rid: int, tick: int, obs: dict, cams: dict) -> None:  # the control thread posts; a "link" thread answers
        assert cams == {}  # a robot without cameras sends none
        with cond:
            asked.append((rid, tick, obs))
            cond.notify()

    src = _source(robot, holder, send, where="cloud", request_timeout_ms=5000)
    stop = threading.Event()

    def link() -> None:
        while not stop.is_set():
            with cond:
                cond.wait_for(lambda: asked or stop.is_set(), 0.5)
                todo, asked[:] = list(asked), []
            for rid, tick, obs in todo:
                o = {k: np.frombuffer(chunk_source.base64.b64decode(v), "<f4") for k, v in obs.items()}
                assert policy is not None
                src.chunk_arrived(rid, tick, 9, policy.act_chunk_batch([o], deterministic=True)[0])

    t = threading.Thread(target=link)
    t.start()
    sink = ChunkSink()
    loop = ControlLoop(robot, PolicyHolder(holder.state_fields, 2), Recorder(50, sink),  # holds no policy itself
                       ControlConfig(rate_hz=100, max_episodes=1), chunks=src)
    try:
        loop.start()
        loop.join(30)
    finally:
        stop.set()
        t.join(5)
    assert loop.error is None and loop.steps == 40
    steps = sink.steps
    acted = [s for s in steps if s.chunk_index >= 0]
    assert acted and all(s.policy_version == 9 for s in acted)  # the cloud's version; the robot holds none
    c = src.executor.counters
    assert c.chunks >= 5 and c.lost == 0
    # Ticks before the first answer took the safe action (hold: zero before anything ran), counted apart.
    assert c.start_ticks == sum(1 for s in steps if s.chunk_index < 0) - c.late_ticks
    assert all(np.allclose(s.action, 0.0) for s in steps[: c.start_ticks])
