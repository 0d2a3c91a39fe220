"""Human take-over in the control loop, against the real MuJoCo Fetch robot.

The hand on the device is a small Teleop subclass (hardware we cannot have
here); the robot, policy, loop and recorder are the real ones.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import numpy as np
import pytest

from edge_agent.control_loop import ControlLoop, EpisodeEnd
from edge_agent.policy_holder import PolicyHolder
from edge_agent.recorder import Recorder
from harness.sinks import ChunkSink
from hal_drivers import registry
from hal_drivers.base import UnitDescription, UnitKind
from hal_drivers.teleop.base import Teleop, TeleopCommand
from shared.actions import ActionScale
from shared.chunk import StepRecord
from shared.config import ControlConfig
from shared.policy import Actor
from shared.weights import decode_weights, encode_weights

HUMAN = np.array([0.5, -0.5, 0.25, -1.0], np.float32)  # normalised


class Hand(Teleop):
    """A scripted hand: ``plan(read_index)`` says what the human does on each tick."""

    def __init__(self, plan: Callable[[int], TeleopCommand]):
        self.plan = plan
        self.reads = 0
        self.started: tuple[int, str] | None = None

    def describe(self) -> UnitDescription:
        return UnitDescription(name="hand", kind=UnitKind.TELEOP, driver="test_hand", identity="hand-1")

    def start(self, action_dim: int, takeover_mode: str = "hold") -> None:
        self.started = (action_dim, takeover_mode)

    def read(self, obs: Mapping[str, np.ndarray]) -> TeleopCommand:
        i = self.reads
        self.reads += 1
        return self.plan(i)


def idle(_i: int) -> TeleopCommand:
    return TeleopCommand(action=np.zeros(4, np.float32))




@pytest.fixture
def robot():
    r = registry.create("mujoco_fetch", {"seed": 0, "task": "reach", "max_episode_steps": 12})
    yield r
    r.close()


def _run(robot, teleop, episodes=2, policy: PolicyHolder | None = None, **cfg) -> tuple[ControlLoop, ChunkSink]:
    spec = robot.describe().episode_spec()
    holder = policy or PolicyHolder({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)
    sink = ChunkSink()
    loop = ControlLoop(robot, holder, Recorder(5, sink), ControlConfig(rate_hz=0, max_episodes=episodes, seed=1, **cfg),
                       teleop=teleop)
    loop.start()
    loop.join(60)
    assert not loop.is_alive() and loop.error is None
    return loop, sink


def _scale(robot) -> ActionScale:
    d = robot.describe()
    return ActionScale(d.action_low, d.action_high)


def _loaded_policy(robot) -> PolicyHolder:
    spec = robot.describe().episode_spec()
    holder = PolicyHolder({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)
    actor = Actor(sum(holder.state_fields.values()), 4, hidden=(16, 16))
    blob = encode_weights(actor.state_dict(), 2, {"actor": actor.arch(), "obs_fields": sorted(holder.state_fields)})
    holder.swap(holder.prepare(decode_weights(blob.data, blob.sha256, 1 << 30)))
    return holder


def test_takeover_rows_carry_the_humans_action_and_the_policys_proposal(robot):
    hand = Hand(lambda i: TeleopCommand(action=HUMAN, takeover=4 <= i < 9))
    policy = _loaded_policy(robot)
    loop, sink = _run(robot, hand, episodes=1, policy=policy, deterministic=True)
    steps = sink.steps
    assert len(steps) == 12
    human_units = robot.clamp(_scale(robot).to_robot(HUMAN))
    for s in steps:
        proposal = robot.clamp(_scale(robot).to_robot(policy.act(s.obs, True)[0]))  # type: ignore[index]
        assert s.policy_version == 2
        assert s.policy_action is not None
        np.testing.assert_allclose(s.policy_action, proposal, atol=1e-6)  # the policy proposed, every tick
        if 4 <= s.step < 9:
            assert s.intervention
            np.testing.assert_allclose(s.action, human_units, atol=1e-6)
            assert not np.allclose(s.action, s.policy_action, atol=1e-3)
        else:
            assert not s.intervention
            np.testing.assert_array_equal(s.action, s.policy_action)
        assert not s.demo
    assert (loop.human.interventions, loop.human.takeovers) == (5, 1)
    assert not loop.human.driving


def test_human_action_is_clamped_and_proposal_is_random_during_random_steps(robot):
    wild = np.array([7.0, np.nan, -3.0, 0.0], np.float32)  # out of range and NaN from a broken axis map
    loop, sink = _run(robot, Hand(lambda i: TeleopCommand(action=wild, takeover=i % 2 == 0)), episodes=1,
                      random_steps=1000)
    d = robot.describe()
    for s in sink.steps:
        assert np.all(s.action >= np.asarray(d.action_low) - 1e-6) and np.all(s.action <= np.asarray(d.action_high) + 1e-6)
        if s.step % 2 == 0:
            assert s.intervention
            np.testing.assert_allclose(s.action, robot.clamp(_scale(robot).to_robot(np.array([1, 0, -1, 0], np.float32))))
            assert not np.allclose(s.action, s.policy_action)  # the random proposal, recorded beside it
        else:
            assert not s.intervention and np.array_equal(s.action, s.policy_action)


def test_without_takeover_rows_are_the_policys(robot):
    loop, sink = _run(robot, Hand(idle), episodes=2)
    assert len(sink.steps) == 24
    assert all(not s.intervention and s.human_reward == 0.0 and np.array_equal(s.action, s.policy_action)
               for s in sink.steps)
    assert loop.human.interventions == 0


def test_no_policy_while_the_human_drives_records_the_human_as_the_proposal(robot):
    loop, sink = _run(robot, Hand(lambda i: TeleopCommand(action=HUMAN, takeover=True)), episodes=1)
    assert all(s.intervention and np.array_equal(s.action, s.policy_action) for s in sink.steps)


def _episode_rows(sink: ChunkSink) -> list[list[StepRecord]]:
    eps: dict[str, list[StepRecord]] = {}
    for c in sink.chunks:
        eps.setdefault(c.episode_id, []).extend(c.steps)
    return list(eps.values())


@pytest.mark.parametrize("event, terminated, success, reward", [
    ("success", True, True, 1.0), ("failure", True, False, 0.0), ("reset", False, False, 0.0)])
def test_episode_buttons_end_the_episode(robot, event, terminated, success, reward):
    hand = Hand(lambda i: TeleopCommand(action=HUMAN, events=(event,) if i == 3 else ()))
    ends: list[EpisodeEnd] = []
    spec = robot.describe().episode_spec()
    holder = PolicyHolder({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)
    sink = ChunkSink()
    loop = ControlLoop(robot, holder, Recorder(50, sink), ControlConfig(rate_hz=0, max_episodes=2), teleop=hand)
    loop.on_episode = ends.append
    loop.start()
    loop.join(60)
    assert loop.error is None
    first, second = _episode_rows(sink)
    assert len(first) == 4, "the press ends the episode on the step it was read for"
    last = first[-1]
    assert (last.terminated, last.truncated, last.success, last.human_reward) == (terminated, not terminated, success, reward)
    assert all(s.human_reward == 0.0 and not (s.terminated or s.truncated) for s in first[:-1])
    assert len(second) == 12 and second[-1].truncated  # the next episode runs to its time limit
    assert [(e.index, e.steps, e.success) for e in ends] == [(1, 4, success), (2, 12, False)]
    assert loop.successes == int(success)


def test_reward_presses_and_operator_labels_go_to_human_reward(robot):
    hand = Hand(lambda i: TeleopCommand(action=HUMAN, reward=0.5 if i in (2, 5) else 0.0))
    spec = robot.describe().episode_spec()
    holder = PolicyHolder({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)
    sink = ChunkSink()
    loop = ControlLoop(robot, holder, Recorder(50, sink), ControlConfig(rate_hz=0, max_episodes=1), teleop=hand)
    loop.operator.add_reward(2.0)  # a ROS 2 cmd/reward label, waiting for the next tick
    loop.start()
    loop.join(60)
    assert loop.error is None
    rows = sink.steps
    assert [s.human_reward for s in rows[:6]] == [2.0, 0.0, 0.5, 0.0, 0.0, 0.5]
    assert all(s.reward <= 0.0 for s in rows), "the driver's reward is untouched by human labels"


class _Classifier(PolicyHolder):
    """A holder whose success classifier says done on the 5th observation it is shown."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = 0

    def success(self, obs, pinned=None):
        self.calls += 1
        return self.calls == 5


def test_classifier_success_ends_the_episode(robot):
    spec = robot.describe().episode_spec()
    holder = _Classifier({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)
    loop, sink = _run(robot, None, episodes=1, policy=holder)
    rows = sink.steps
    assert len(rows) == 5 and rows[-1].terminated and rows[-1].success
    assert loop.successes == 1


def test_a_failing_device_does_not_stop_the_loop(robot, caplog):
    def plan(i: int) -> TeleopCommand:
        if 2 <= i < 8:
            raise OSError(19, "No such device")  # unplugged
        return TeleopCommand(action=HUMAN, takeover=True)

    hand = Hand(plan)
    with caplog.at_level(logging.INFO, logger="fleetrl.teleop"):
        loop, sink = _run(robot, hand, episodes=2)
    assert loop.steps == 24 and hand.reads == 24
    flags = [s.intervention for s in sink.steps]
    assert flags[:2] == [True, True] and flags[2:8] == [False] * 6 and all(flags[8:])
    assert loop.human.read_errors == 6
    failed = [r for r in caplog.records if "teleop_read_failed" in r.getMessage()]
    assert len(failed) == 1, "logged once, not every tick"
    assert any("teleop_read_recovered" in r.getMessage() for r in caplog.records)


def test_a_wrong_sized_action_is_a_failed_read(robot):
    loop, sink = _run(robot, Hand(lambda i: TeleopCommand(action=np.zeros(3, np.float32), takeover=True)), episodes=1)
    assert not any(s.intervention for s in sink.steps) and loop.human.read_errors == 12


def test_demo_loop_drives_every_step_and_tags_rows(robot):
    hand = Hand(lambda i: TeleopCommand(action=HUMAN, takeover=False))  # button not held: forced on anyway
    spec = robot.describe().episode_spec()
    holder = PolicyHolder({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)
    sink = ChunkSink()
    loop = ControlLoop(robot, holder, Recorder(5, sink), ControlConfig(rate_hz=0, max_episodes=2), teleop=hand, demo=True)
    loop.start()
    loop.join(60)
    assert loop.error is None and len(sink.steps) == 24
    human_units = robot.clamp(_scale(robot).to_robot(HUMAN))
    assert all(s.demo and s.intervention for s in sink.steps)
    assert all(np.allclose(s.action, human_units) for s in sink.steps)


def test_a_device_failing_while_recording_stops_the_loop_with_a_clear_error(robot, caplog):
    """While recording demos nobody else may drive: no random exploration, no policy, no traceback."""
    from edge_agent.human import TeleopLost

    def plan(i: int) -> TeleopCommand:
        if i == 3:
            raise OSError(19, "No such device")  # unplugged mid-demo
        return TeleopCommand(action=HUMAN, takeover=True)

    spec = robot.describe().episode_spec()
    holder = PolicyHolder({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)
    sink = ChunkSink()
    loop = ControlLoop(robot, holder, Recorder(5, sink), ControlConfig(rate_hz=0, max_episodes=2), teleop=Hand(plan),
                       demo=True)
    with caplog.at_level(logging.INFO):
        loop.start()
        loop.join(60)
    assert not loop.is_alive() and isinstance(loop.error, TeleopLost)
    assert "No such device" in str(loop.error) and loop.human.read_errors == 1
    human_units = robot.clamp(_scale(robot).to_robot(HUMAN))
    assert len(sink.steps) == 3 and all(s.demo and np.allclose(s.action, human_units) for s in sink.steps)
    assert sink.steps[-1].truncated  # the cut episode ends there
    assert not any(r.exc_info for r in caplog.records)
