"""The robot's own hold action on late ticks: the executor (sans-I/O) takes the per-tick hold it is
given, asking for it only on a tick that holds; through the real control loop, a driver with the hook
(a position-controlled arm that sags under gravity) is held at its measured position on every late
tick, while one without the hook keeps repeating the last action, as before."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent import chunk_source
from edge_agent.control_loop import ControlLoop
from edge_agent.policy_holder import PolicyHolder
from edge_agent.recorder import Recorder
from hal_drivers import registry
from hal_drivers.base import FieldSpec, Robot, StepResult, UnitDescription, UnitKind
from harness.sinks import ChunkSink
from shared.chunk_exec import ChunkExecutor
from shared.config import ControlConfig
from shared.config_inference import AgentPolicyConfig
from shared.observations import state_sizes

P = 0.02


# --------------------------------------------------------------------------- the executor, sans-I/O


class Calls:
    """A hold that changes every tick (a position robot's), counting how often it was asked."""

    def __init__(self, value=None):
        self.n, self.value = 0, value

    def __call__(self):
        self.n += 1
        return np.array([-0.1 * self.n], np.float32) if self.value is None else self.value


@pytest.mark.parametrize("on_late", ["hold", "finish", "zero"])
def test_late_ticks_take_the_hold_given_for_that_tick(on_late):
    ex = ChunkExecutor(1, horizon=4, overlap=1, blend_steps=2, on_late=on_late, period_s=P, max_inflight=1,
                       zero_action=np.array([0.5], np.float32))
    hold = Calls()
    rid = ex.request(0, 0.0)
    ex.receive(rid, 0, np.array([[0.1], [0.2], [0.3], [0.4]], np.float32), 2, 0, 0.0)
    steps, sent = [], {}
    for t in range(8):
        rid = ex.request(t, t * P)  # the next request is not answered before tick 8 (nor lost: 0.25 s timeout)
        if rid is not None:
            sent[rid] = t
        steps.append(ex.act(t, hold))
    got = [float(s.action[0]) for s in steps]
    assert got[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4]) and not any(s.late for s in steps[:4])
    assert all(s.late and s.chunk_index == -1 for s in steps[4:])
    if on_late == "zero":
        assert hold.n == 0 and got[4:] == pytest.approx([0.5] * 4)  # zero never asks for the hold
    else:
        assert hold.n == 4  # asked on the late ticks only, once each
        assert got[4:] == pytest.approx([-0.1, -0.2, -0.3, -0.4])  # this tick's hold, not the last action
    # The next chunk fades in from what the robot did last (the hold), not from the chunk's last action.
    [(rid, start)] = sent.items()
    assert ex.receive(rid, start, np.full((8, 1), 0.9, np.float32), 3, 8, 8 * P)
    first = float(ex.act(8, hold).action[0])
    last = got[-1]
    assert first == pytest.approx(0.9 + (last - 0.9) * 2 / 3)


def test_no_hold_given_or_none_keeps_repeating_the_last_action():
    ex = ChunkExecutor(1, horizon=2, overlap=0, blend_steps=0, period_s=P, max_inflight=1)
    rid = ex.request(0, 0.0)
    ex.receive(rid, 0, np.array([[0.3], [0.6]], np.float32), 1, 0, 0.0)
    asked = []

    def no_hold() -> None:  # a driver without a hold of its own
        asked.append(1)

    acts = [float(ex.act(t, no_hold if t % 2 else None).action[0]) for t in range(6)]
    assert acts == pytest.approx([0.3, 0.6, 0.6, 0.6, 0.6, 0.6]) and len(asked) == 2  # ticks 3 and 5


def test_a_hold_of_the_wrong_shape_is_refused_by_name():
    ex = ChunkExecutor(2, horizon=2, period_s=P)
    with pytest.raises(ValueError, match="hold action has shape"):
        ex.act(0, lambda: np.zeros(3, np.float32))


# --------------------------------------------------------------------------- through the control loop


class SaggingArm(Robot):
    """A position-controlled arm (the action is a target position) that sags under gravity: every tick
    it moves halfway to its target and drops ``SAG``; the hook holds it at the measured position."""

    SAG = 0.05

    def __init__(self, hook: bool = True, steps: int = 20):
        self.hook, self.steps, self.asked = hook, steps, 0
        self._x = np.zeros(2, np.float64)
        self._n = 0
        self._description = UnitDescription(
            name="arm", kind=UnitKind.ROBOT, driver="sagging_arm", identity="test", control_hz=50.0,
            observation={"position": FieldSpec((2,))}, action_shape=(2,),
            action_low=(-2.0, -1.0), action_high=(2.0, 3.0),  # not symmetric: the loop scales both ways
        )

    def describe(self) -> UnitDescription:
        return self._description

    def reset(self) -> dict[str, np.ndarray]:
        self._x, self._n = np.array([0.5, 1.5]), 0
        return {"position": self._x.astype(np.float32)}

    def step(self, action: np.ndarray) -> StepResult:
        self._x = self._x + 0.5 * (self.clamp(action) - self._x) - self.SAG
        self._n += 1
        return StepResult({"position": self._x.astype(np.float32)}, 0.0, False, self._n >= self.steps)

    def hold_action(self, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        self.asked += 1
        return np.array(obs["position"], np.float32) if self.hook else None


def _run(robot: SaggingArm, on_late: str) -> tuple[list, chunk_source.ChunkSource]:
    d = robot.describe()
    spec = d.episode_spec()
    answered: list[int] = []

    def send(rid: int, tick: int, obs: dict, cams: dict) -> None:  # the link answers the first request only
        if not answered:
            answered.append(rid)
            src.chunk_arrived(rid, tick, 4, np.full((8, 2), 0.5, np.float32))

    cfg = AgentPolicyConfig(where="cloud", horizon=8, overlap=2, blend_steps=0, on_late=on_late,
                            request_timeout_ms=60_000, max_inflight=1)
    src = chunk_source.build(cfg, 0.0, d.action_low, d.action_high, robot.clamp, ["position"], send,
                             PolicyHolder(state_sizes(spec), 2), True)
    sink = ChunkSink()
    loop = ControlLoop(robot, PolicyHolder(state_sizes(spec), 2), Recorder(50, sink),
                       ControlConfig(rate_hz=0, max_episodes=1), chunks=src)
    loop.start()
    loop.join(30)
    assert loop.error is None and loop.steps == robot.steps
    return sink.steps, src


def test_late_ticks_execute_the_drivers_hold_action_not_the_last_one():
    robot = SaggingArm()
    steps, src = _run(robot, "hold")
    c = src.executor.counters
    # Tick 0 waits for the answer (taken at tick 1), the chunk plays ticks 1..7, then every tick is late.
    assert [s.chunk_index for s in steps[:9]] == [-1, 1, 2, 3, 4, 5, 6, 7, -1]
    late = [s for s in steps if s.chunk_index < 0]
    assert c.start_ticks == 1 and c.late_ticks == len(late) - 1 == 12
    assert robot.asked == len(late)  # asked on those ticks only
    planned = np.array([1.0, 2.0])  # 0.5 in [-1, 1] on [-2, 2] x [-1, 3]
    assert all(np.allclose(s.action, planned) for s in steps if s.chunk_index >= 0)
    for s in late:  # held where it was measured at that tick, which sags a little every tick
        assert np.allclose(s.action, s.obs["position"], atol=1e-5)
    held = np.stack([s.action for s in late[1:]])
    assert (np.diff(held[:, 0]) < -SaggingArm.SAG / 2).all()  # a new hold every tick, following the arm


def test_a_driver_without_the_hook_keeps_repeating_the_last_action():
    robot = SaggingArm(hook=False)
    steps, _ = _run(robot, "hold")
    late = steps[8:]
    assert all(s.chunk_index == -1 and np.allclose(s.action, [1.0, 2.0]) for s in late)


def test_zero_never_asks_the_driver():
    robot = SaggingArm()
    steps, _ = _run(robot, "zero")
    assert robot.asked == 0
    assert all(np.allclose(s.action, [0.0, 0.0]) for s in steps[8:])  # zero in robot units


# --------------------------------------------------------------------------- the built-in drivers


def test_point_mass_holds_with_no_force():
    robot = registry.create("point_mass", {"dims": 3, "seed": 1})
    obs = robot.reset()
    assert np.array_equal(robot.hold_action(obs), np.zeros(3, np.float32))


def test_mujoco_fetch_holds_with_no_delta():
    pytest.importorskip("gymnasium_robotics", reason="mujoco_fetch needs gymnasium-robotics")
    robot = registry.create("mujoco_fetch", {"task": "reach", "seed": 0})
    try:
        obs = robot.reset()
        hold = robot.hold_action(obs)
        assert hold.shape == robot.describe().action_shape and not hold.any()
        grip = obs["observation"][:3].copy()
        for _ in range(5):  # holding keeps the gripper where it is
            obs = robot.step(robot.hold_action(obs)).observation
        assert np.abs(obs["observation"][:3] - grip).max() < 1e-3
    finally:
        robot.close()
