"""The perturbed Fetch arm (``robot.options.dynamics``): the "real" half of a sim/real twin.

Each perturbation is checked against the unperturbed simulator on the same seed
and the same commands: what it should change changes, by about the amount it
says, and with every default the arm is exactly the simulator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from hal_drivers.mujoco_fetch import FetchConfig, FetchRobot
from hal_drivers.mujoco_fetch.twin import Dynamics
from shared.errors import ConfigError

MOVE = np.array([1.0, 0.0, 0.0, 0.0], np.float32)  # +x, as fast as the arm goes


def _robot(task: str = "reach", **dynamics: Any) -> FetchRobot:
    return FetchRobot(FetchConfig(task=task, seed=3, dynamics=Dynamics(**dynamics)))  # type: ignore[arg-type]


def _grip_path(robot: FetchRobot, actions: list[np.ndarray]) -> list[np.ndarray]:
    """Gripper positions (observation[:3]) after each command, from a fresh episode."""
    robot.reset()
    return [robot.step(a).observation["observation"][:3].copy() for a in actions]


def test_every_default_is_the_simulator_itself() -> None:
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 4).astype(np.float32) for _ in range(20)]
    sim, twin = _robot(), _robot(seed=99)  # only the noise seed differs: no noise, no change
    try:
        assert not twin.config.dynamics.changed and "dynamics" not in twin.describe().extra
        for a, b in zip(_grip_path(sim, actions), _grip_path(twin, actions)):
            np.testing.assert_array_equal(a, b)
    finally:
        sim.close(), twin.close()


def test_weak_actuator_moves_the_arm_by_its_gain() -> None:
    sim, twin = _robot(), _robot(action_gain=0.5)
    try:
        start = sim.reset()["observation"][:3]
        moved_sim = _grip_path(sim, [MOVE * 0.4] * 3)[-1] - start
        moved_twin = _grip_path(twin, [MOVE * 0.4] * 3)[-1] - start
        assert moved_sim[0] > 0.02
        assert moved_twin[0] == pytest.approx(0.5 * moved_sim[0], rel=0.15)
        assert twin.describe().extra["dynamics"] == {"action_gain": 0.5}
    finally:
        sim.close(), twin.close()


def test_latency_delays_each_command_by_its_ticks_and_a_new_episode_has_none_in_flight() -> None:
    sim, twin = _robot(), _robot(action_latency_steps=2)
    try:
        cmds = [MOVE, -MOVE, MOVE, MOVE, MOVE]  # the last two are still in flight when the episode ends
        want = _grip_path(sim, [0 * MOVE, 0 * MOVE, *cmds[:3]])  # the same commands, two ticks later
        got = _grip_path(twin, cmds)
        for a, b in zip(want, got):
            np.testing.assert_allclose(a, b, atol=1e-6)
        twin.reset()  # what was in flight at the end of the last episode is gone
        np.testing.assert_allclose(_grip_path(twin, [MOVE])[0], _grip_path(sim, [0 * MOVE])[0], atol=1e-6)
    finally:
        sim.close(), twin.close()


def test_sensor_and_action_noise_are_seeded_and_of_the_configured_size() -> None:
    sim, a, b = _robot(), _robot(obs_noise=0.01, seed=1), _robot(obs_noise=0.01, seed=1)
    try:
        truth, x, y = sim.reset(), a.reset(), b.reset()
        err = x["observation"] - truth["observation"]
        assert 0.003 < float(np.std(err)) < 0.03
        np.testing.assert_array_equal(x["observation"], y["observation"])  # the same seed, the same noise
        np.testing.assert_array_equal(x["desired_goal"], truth["desired_goal"])  # the goal is given, not measured
    finally:
        sim.close(), a.close(), b.close()
    sim, noisy = _robot(), _robot(action_noise=0.3)
    try:
        spread = np.std([p[1] for p in _grip_path(noisy, [MOVE * 0.2] * 10)]) - np.std(
            [p[1] for p in _grip_path(sim, [MOVE * 0.2] * 10)])
        assert spread > 1e-3  # commanded straight along x; noise wanders in y
    finally:
        sim.close(), noisy.close()


def test_block_mass_friction_and_damping_change_the_model_not_just_the_label() -> None:
    import mujoco

    sim, twin = _robot("push"), _robot("push", object_mass_scale=3.0, friction_scale=2.0, damping_scale=0.5)
    try:
        ms, mt = sim._env.unwrapped.model, twin._env.unwrapped.model
        obj = mujoco.mj_name2id(ms, mujoco.mjtObj.mjOBJ_BODY, "object0")
        assert mt.body_mass[obj] == pytest.approx(3.0 * ms.body_mass[obj])
        np.testing.assert_allclose(mt.geom_friction[:, 0], 2.0 * ms.geom_friction[:, 0])
        np.testing.assert_allclose(mt.dof_damping, 0.5 * ms.dof_damping)
        twin.reset()
        twin.reset()  # a reset restores the state, not the model: the block stays heavy
        assert mt.body_mass[obj] == pytest.approx(3.0 * ms.body_mass[obj])
    finally:
        sim.close(), twin.close()


def test_colours_change_what_the_camera_sees() -> None:
    def frame(**dyn: Any) -> np.ndarray:
        r = FetchRobot(FetchConfig(task="push", seed=3, camera=True, camera_size=48, dynamics=Dynamics(**dyn)))
        try:
            return r.reset()["camera"].astype(np.int16)
        finally:
            r.close()

    plain, red = frame(), frame(colours={"table0": (0.9, 0.1, 0.1, 1.0)})
    changed = np.abs(plain - red).sum(axis=-1) > 30
    assert changed.mean() > 0.05  # the table covers a good part of the view
    assert (red[..., 0] - red[..., 1])[changed].mean() > 40  # and it is now red


@pytest.mark.parametrize("options, message", [
    ({"colours": {"robot0:base_link": (1, 0, 0, 1)}}, "not a body this arm can recolour"),
    ({"colours": {"table0": (1.5, 0, 0, 1)}}, "must be in [0, 1]"),
    ({"action_gain": 0}, "action_gain"),
    ({"action_latency_steps": -1}, "action_latency_steps"),
    ({"wind": 3}, "wind"),
])
def test_bad_dynamics_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FetchConfig(dynamics=options)  # type: ignore[arg-type]


def test_a_block_mass_on_the_reach_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="reach task has no block"):
        _robot("reach", object_mass_scale=2.0)
