"""The scripted Fetch operator: an oracle that solves the real MuJoCo tasks, and a corrector
that takes over only when the task stalls or drifts."""

from __future__ import annotations

import numpy as np
import pytest

from hal_drivers import registry
from hal_drivers.teleop.scripted import ScriptedFetch, push_action
from shared.errors import ConfigError


def operator(**options) -> ScriptedFetch:
    op = registry.create("scripted_fetch", options, section="teleop")
    assert isinstance(op, ScriptedFetch)
    op.start(4)
    return op


def run(task: str, episodes: int, op: ScriptedFetch, policy=None, seed: int = 3) -> tuple[float, float]:
    """(success rate, share of steps the operator drove); the policy acts when the operator does not."""
    robot = registry.create("mujoco_fetch", {"task": task, "seed": seed})
    successes = driven = steps = 0
    try:
        for _ in range(episodes):
            obs = robot.reset()
            while True:
                cmd = op.read(obs)
                action = cmd.action if cmd.takeover or policy is None else policy(obs)
                driven += cmd.takeover
                steps += 1
                res = robot.step(action)
                obs = res.observation
                if res.terminated or res.truncated:
                    break
            successes += res.success
    finally:
        robot.close()
    return successes / episodes, driven / steps


@pytest.mark.parametrize("task, episodes", [("push", 30), ("reach", 10)])
def test_oracle_solves_the_task(task, episodes):
    op = operator(task=task, mode="always")
    rate, driven = run(task, episodes, op)
    assert rate >= 0.9, f"{task}: the oracle succeeded in only {rate:.0%} of {episodes} episodes"
    assert driven == 1.0  # "always" takes over every step
    assert op.episodes == episodes  # each reset seen as a new episode


def test_noisy_demos_differ_and_still_mostly_succeed():
    a, b = operator(noise=0.1, seed=1), operator(noise=0.1, seed=2)
    obs = {"observation": np.zeros(25, np.float32), "desired_goal": np.ones(3, np.float32),
           "achieved_goal": np.zeros(3, np.float32)}
    assert not np.allclose(a.read(obs).action, b.read(obs).action)
    rate, _ = run("push", 20, operator(noise=0.1, seed=1))
    assert rate >= 0.8


def test_correct_mode_takes_over_when_the_policy_does_not_push():
    rng = np.random.default_rng(0)
    oracle_op, random_op = operator(mode="correct"), operator(mode="correct")
    oracle_rate, oracle_driven = run("push", 15, oracle_op, policy=lambda obs: push_action(obs))
    random_rate, random_driven = run("push", 15, random_op, policy=lambda obs: rng.uniform(-1, 1, 4).astype(np.float32))
    assert oracle_rate >= 0.9
    assert oracle_op.takeovers <= 1, "a policy that already pushes well needs no correction"
    assert random_op.takeovers >= 12, "random actions leave the block where it is: the operator steps in"
    assert random_driven > 0.2 > oracle_driven
    assert random_rate > 0.2  # its corrections do push the block (random alone: ~0.1)


def test_never_mode_proposes_without_taking_over():
    rng = np.random.default_rng(0)
    op = operator(mode="never")
    _, driven = run("push", 3, op, policy=lambda obs: rng.uniform(-1, 1, 4).astype(np.float32))
    assert driven == 0.0 and op.takeovers == 0


def test_correct_mode_holds_then_hands_back():
    op = operator(mode="correct", patience=3, progress_m=0.01, hold_steps=4)
    obs = {"observation": np.zeros(25, np.float32), "desired_goal": np.array([1.0, 0, 0], np.float32),
           "achieved_goal": np.zeros(3, np.float32)}
    takeovers = [op.read(obs).takeover for _ in range(12)]  # the block never moves: stalled after 3 steps
    assert takeovers == [False] * 3 + [True] * 4 + [False] * 3 + [True] * 2
    # drift: the block moved 4 cm away from the goal since the episode started -> take over at once
    op = operator(mode="correct", drift_m=0.03, patience=50, episode_steps=0)
    assert not op.read(obs).takeover
    assert op.read({**obs, "achieved_goal": np.array([-0.04, 0, 0], np.float32)}).takeover
    # a new goal is a new episode: the drift reference and the hold start over
    assert not op.read({**obs, "desired_goal": np.array([0.0, 1.0, 0], np.float32),
                        "achieved_goal": np.array([-0.04, 0, 0], np.float32)}).takeover
    assert op.episodes == 2


def test_episode_steps_fallback_starts_a_new_episode_when_the_goal_repeats():
    op = operator(mode="always", episode_steps=5)
    obs = {"observation": np.zeros(25, np.float32), "desired_goal": np.ones(3, np.float32),
           "achieved_goal": np.zeros(3, np.float32)}
    for _ in range(11):
        op.read(obs)
    assert op.episodes == 3


@pytest.mark.parametrize(
    "options, key",
    [
        ({"task": "pick"}, "teleop.options.task"),
        ({"mode": "sometimes"}, "teleop.options.mode"),
        ({"noise": -0.1}, "teleop.options.noise"),
        ({"patience": 0}, "teleop.options.patience"),
        ({"hold_steps": 0}, "teleop.options.hold_steps"),
        ({"axes": [{"source": "x", "action": 0}]}, "teleop.options.axes"),
        ({"takeover_button": "BTN_A"}, "teleop.options.takeover_button"),
        ({"bogus": 1}, "teleop.options.bogus"),
    ],
)
def test_bad_options_name_their_key(options, key):
    with pytest.raises(ConfigError) as ei:
        registry.create("scripted_fetch", options, section="teleop")
    assert ei.value.message.startswith(key), ei.value.message


def test_wrong_robot_is_a_config_error():
    op = registry.create("scripted_fetch", {}, section="teleop")
    with pytest.raises(ConfigError, match="4 action dimensions"):
        op.start(7)  # type: ignore[attr-defined]
    op.start(4)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="desired_goal"):
        op.read({"observation": np.zeros(25, np.float32)})  # type: ignore[attr-defined]
