"""The point-mass driver: its description, seeding, clamps, episode ends, options, and the real control loop."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.control_loop import ControlLoop
from edge_agent.policy_holder import PolicyHolder
from edge_agent.recorder import Recorder
from harness.sinks import ChunkSink
from hal_drivers import registry
from hal_drivers.base import Robot, UnitKind
from hal_drivers.point_mass import PointMassConfig, PointMassRobot
from shared.config import ControlConfig, read_toml
from shared.errors import ConfigError
from shared.policy import Actor
from shared.weights import decode_weights, encode_weights

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("position", "velocity", "goal")


def make(**opts) -> PointMassRobot:
    robot = registry.create("point_mass", opts)
    assert isinstance(robot, PointMassRobot)
    return robot


def towards_goal(obs: dict[str, np.ndarray]) -> np.ndarray:
    """A PD controller that reaches any goal in a few dozen steps."""
    return np.clip(5 * (obs["goal"] - obs["position"]) - 0.5 * obs["velocity"], -1, 1).astype(np.float32)


def run_episode(robot: Robot, policy=towards_goal, limit: int = 10_000):
    obs = robot.reset()
    results = []
    for _ in range(limit):
        res = robot.step(policy(obs))
        results.append(res)
        obs = res.observation
        if res.terminated or res.truncated:
            return results
    raise AssertionError(f"no episode end in {limit} steps")


# -- the description ---------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2, 5])
def test_describe_matches_what_it_returns(dims):
    robot = make(dims=dims, seed=3)
    d = robot.describe()
    assert (d.kind, d.driver, d.name) == (UnitKind.ROBOT, "point_mass", "arm")
    assert d.identity == f"sim-point-mass-{dims}d-3"
    assert d.control_hz == 20.0  # dt = 0.05 s
    assert list(d.observation) == list(FIELDS)
    assert all(s.shape == (dims,) and s.dtype == "float32" and not s.is_image for s in d.observation.values())
    assert d.action_shape == (dims,)
    assert d.action_low == (-1.0,) * dims and d.action_high == (1.0,) * dims
    assert d.extra["dims"] == dims and d.extra["units"]["action"] == "N"
    spec = d.episode_spec()  # what the recorder and the learner build on
    assert spec.action_dim == dims and spec.state_fields == list(FIELDS)
    assert d.to_dict()["observation"]["goal"] == {"shape": [dims], "dtype": "float32"}

    obs = robot.reset()
    assert set(obs) == set(FIELDS)
    for k, v in obs.items():
        assert v.shape == (dims,) and v.dtype == np.float32, k
    assert np.all(np.abs(obs["position"]) <= 1) and np.all(np.abs(obs["goal"]) <= 1)  # in the arena
    assert np.all(obs["velocity"] == 0)  # every episode starts at rest
    res = robot.step(np.zeros(dims, np.float32))
    assert set(res.observation) == set(FIELDS)
    assert all(v.shape == (dims,) and v.dtype == np.float32 for v in res.observation.values())
    robot.close()
    robot.close()  # idempotent


def test_a_different_embodiment_from_fetch():
    d = make().describe()
    assert d.action_shape == (2,)  # Fetch: 4
    assert sum(s.size for s in d.observation.values()) == 6  # Fetch: 10 + 3 + 3


def test_identity_option_and_unit_name():
    robot = registry.create("point_mass", {"identity": "pm-07"}, name="puck")
    d = robot.describe()
    assert (d.identity, d.name) == ("pm-07", "puck")


def test_registered_by_name_and_entry_point_in_pyproject():
    assert registry.get("point_mass") is PointMassRobot
    assert "point_mass" in registry.available()
    eps = read_toml((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][registry.ENTRY_POINT_GROUP]
    module, _, attr = eps["point_mass"].partition(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is PointMassRobot


def test_importing_it_loads_neither_torch_nor_mujoco():
    code = (
        "import sys, hal_drivers.point_mass\n"
        "bad = [m for m in ('torch', 'mujoco', 'gymnasium') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -- seeding -----------------------------------------------------------------------


def _trajectory(robot: Robot, episodes: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(episodes):
        obs = robot.reset()
        out.append(np.concatenate([obs[k] for k in FIELDS]))
        for _ in range(10):
            res = robot.step(rng.uniform(-1, 1, robot.describe().action_shape).astype(np.float32))
            out.append(np.concatenate([res.observation[k] for k in FIELDS] + [np.float32([res.reward])]))
    return out


def test_same_seed_same_episodes_other_seed_others():
    a, b, c = _trajectory(make(seed=11, dims=3)), _trajectory(make(seed=11, dims=3)), _trajectory(make(seed=12, dims=3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_each_reset_draws_a_new_start_and_goal():
    robot = make(seed=0)
    starts = {tuple(robot.reset()["goal"].tolist()) for _ in range(5)}
    assert len(starts) == 5


# -- clamping and actions ----------------------------------------------------------


def test_actions_are_clamped_to_the_limits():
    big, unit = make(seed=5), make(seed=5)
    big.reset()
    unit.reset()
    for a in ([10.0, -7.0], [1e9, 0.5]):
        r1 = big.step(np.asarray(a, np.float32))
        r2 = unit.step(np.clip(np.asarray(a, np.float32), -1, 1))
        for k in FIELDS:
            np.testing.assert_array_equal(r1.observation[k], r2.observation[k])
    np.testing.assert_array_equal(big.clamp(np.array([3.0, np.nan])), np.float32([1.0, 0.0]))


def test_nan_action_is_no_force():
    robot = make(seed=1)
    obs = robot.reset()
    res = robot.step(np.array([np.nan, np.nan]))
    np.testing.assert_array_equal(res.observation["position"], obs["position"])  # at rest, no force: no motion
    np.testing.assert_array_equal(res.observation["velocity"], [0, 0])


def test_wrong_action_shape_is_refused():
    robot = make(dims=3)
    robot.reset()
    for bad in (np.zeros(2), np.zeros(4), np.zeros((1, 3)), np.float32(0.5)):
        with pytest.raises(ValueError, match=r"expected \(3,\)"):
            robot.step(bad)


def test_walls_hold_the_mass_in_the_arena():
    robot = make(seed=2, arena=0.5, tolerance=0.01, max_episode_steps=200, terminate_on_success=False)
    results = run_episode(robot, lambda _obs: np.ones(2, np.float32))
    pos = np.stack([r.observation["position"] for r in results])
    assert np.all(np.abs(pos) <= 0.5 + 1e-6)
    np.testing.assert_allclose(pos[-1], [0.5, 0.5], atol=1e-6)  # pressed into the corner
    np.testing.assert_array_equal(results[-1].observation["velocity"], [0, 0])


def test_observations_are_fresh_arrays():
    """The recorder keeps every observation: a driver must never change one it returned."""
    robot, twin = make(seed=4), make(seed=4)
    obs = robot.reset()
    twin.reset()
    before = {k: v.copy() for k, v in obs.items()}
    push = np.float32([0.3, -0.4])
    res = robot.step(push)
    for k in FIELDS:
        np.testing.assert_array_equal(obs[k], before[k])
        assert res.observation[k] is not obs[k]
    for v in res.observation.values():
        v[:] = 0.123  # a caller scribbling on what it got does not change the robot
    twin.step(push)
    a, b = robot.step(push), twin.step(push)
    for k in FIELDS:
        np.testing.assert_array_equal(a.observation[k], b.observation[k])


# -- rewards, success, episode ends ------------------------------------------------


def test_reaching_the_goal_is_success_and_ends_the_episode():
    robot = make(seed=0, dims=3)
    for _ in range(5):
        results = run_episode(robot)
        last = results[-1]
        assert last.terminated and last.success and not last.truncated
        assert len(results) < 50
        assert -robot.config.tolerance <= last.reward <= 0
        assert not any(r.success or r.terminated or r.truncated for r in results[:-1])
        assert all(r.reward == pytest.approx(-r.info["distance"]) for r in results)
        assert results[0].reward < last.reward  # closer at the end


def test_reward_is_minus_the_distance():
    robot = make(seed=9)
    robot.reset()
    res = robot.step(np.float32([0.3, -0.2]))
    o = res.observation
    assert res.reward == pytest.approx(-float(np.linalg.norm(o["position"] - o["goal"])), abs=1e-6)


def test_no_progress_is_truncated_at_max_episode_steps():
    robot = make(seed=0, max_episode_steps=17)
    results = run_episode(robot, lambda _obs: np.zeros(2, np.float32))
    assert len(results) == 17
    assert results[-1].truncated and not results[-1].terminated and not results[-1].success


def test_without_terminate_on_success_it_runs_to_the_step_limit():
    robot = make(seed=0, terminate_on_success=False, max_episode_steps=60)
    results = run_episode(robot)
    assert len(results) == 60
    assert results[-1].truncated and not results[-1].terminated
    assert results[-1].success  # parked on the goal: success on every step there
    assert not any(r.terminated for r in results)


def test_step_outside_an_episode_is_an_error():
    robot = make(max_episode_steps=3)
    with pytest.raises(RuntimeError, match="reset"):
        robot.step(np.zeros(2, np.float32))
    run_episode(robot, lambda _obs: np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        robot.step(np.zeros(2, np.float32))
    robot.reset()
    robot.step(np.zeros(2, np.float32))  # a reset starts the next one


def test_random_actions_rarely_succeed_a_controller_always_does():
    """A task worth learning: random exploration almost never reaches the goal."""
    robot = make(seed=0)
    rng = np.random.default_rng(0)
    rand = [run_episode(robot, lambda _o: rng.uniform(-1, 1, 2).astype(np.float32))[-1].success for _ in range(100)]
    ctrl = [run_episode(robot)[-1].success for _ in range(100)]
    assert sum(rand) <= 15 and sum(ctrl) == 100


# -- options -----------------------------------------------------------------------


def test_defaults():
    c = PointMassConfig()
    assert (c.dims, c.seed, c.max_episode_steps, c.arena, c.tolerance, c.dt, c.terminate_on_success) == (
        2, 0, 50, 1.0, 0.1, 0.05, True)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"dims": 0}, "robot.options.dims"),
        ({"dims": 33}, "robot.options.dims"),
        ({"dims": "two"}, "robot.options.dims"),
        ({"max_episode_steps": 0}, "robot.options.max_episode_steps"),
        ({"arena": 0}, "robot.options.arena"),
        ({"tolerance": -0.1}, "robot.options.tolerance"),
        ({"tolerance": 1.0}, "robot.options.tolerance"),  # not below the default arena
        ({"arena": 0.2, "tolerance": 0.3}, "robot.options.tolerance"),
        ({"dt": 0}, "robot.options.dt"),
        ({"identity": ""}, "robot.options.identity"),
        ({"bogus": 1}, "robot.options.bogus"),
    ],
)
def test_bad_option_names_its_key(options, key):
    with pytest.raises(ConfigError) as ei:
        registry.create("point_mass", options)
    assert ei.value.message.startswith(key + ":"), ei.value.message


def test_tolerance_error_says_why():
    with pytest.raises(ConfigError, match=r"robot\.options\.tolerance: .*smaller than arena \(0\.2 m\)"):
        registry.create("point_mass", {"arena": 0.2, "tolerance": 0.3})


def test_a_bad_arena_is_reported_once_not_twice():
    with pytest.raises(ConfigError) as ei:
        registry.create("point_mass", {"arena": -1, "tolerance": 0.5})
    assert ei.value.message.startswith("robot.options.arena:")


# -- under the real control loop ---------------------------------------------------




def _loop(robot: Robot, sink: ChunkSink, **cfg) -> ControlLoop:
    spec = robot.describe().episode_spec()
    holder = PolicyHolder({k: v.size for k, v in spec.observation.items()}, spec.action_dim)
    return ControlLoop(robot, holder, Recorder(8, sink), ControlConfig(**cfg))


def test_control_loop_records_every_step_with_its_episode_ends():
    # a wide tolerance: random actions reach the goal in some episodes, not in others
    robot = make(seed=1, dims=3, arena=1.0, tolerance=0.8, max_episode_steps=20)
    sink = ChunkSink()
    loop = _loop(robot, sink, rate_hz=0, max_episodes=12, seed=2)
    loop.start()
    loop.join(30)
    assert not loop.is_alive() and loop.error is None
    assert loop.episodes == 12
    episodes: dict[str, list] = {}
    for c in sink.chunks:
        episodes.setdefault(c.episode_id, []).append(c)
    assert len(episodes) == 12
    outcomes = []
    for chunks in episodes.values():
        steps = [s for c in chunks for s in c.steps]
        assert [s.step for s in steps] == list(range(len(steps)))
        assert all(not (s.terminated or s.truncated) for s in steps[:-1])
        last = steps[-1]
        if last.success:
            assert last.terminated and not last.truncated and len(steps) <= 20
        else:
            assert last.truncated and not last.terminated and len(steps) == 20
        assert chunks[-1].episode_done and chunks[-1].success == last.success
        for a, b in zip(steps, steps[1:]):
            for k in FIELDS:
                np.testing.assert_array_equal(a.next_obs[k], b.obs[k])
        acts = np.stack([s.action for s in steps])
        assert acts.shape == (len(steps), 3) and np.all(np.abs(acts) <= 1)
        assert all(s.obs["goal"].shape == (3,) for s in steps)
        outcomes.append(last.success)
    assert any(outcomes) and not all(outcomes)
    assert loop.successes == sum(outcomes)
    assert sum(len(c.steps) for c in sink.chunks) == loop.steps


def test_control_loop_acts_with_a_policy_for_this_embodiment():
    """A policy of the point mass's own sizes (9 inputs, 3 outputs) drives it through the loop."""
    robot = make(seed=0, dims=3, max_episode_steps=10)
    sink = ChunkSink()
    loop = _loop(robot, sink, rate_hz=0, max_episodes=2, seed=0)
    actor = Actor(9, 3, hidden=(16, 16))
    blob = encode_weights(actor.state_dict(), 5, {"actor": actor.arch(), "obs_fields": list(FIELDS)})
    loop.policy.swap(loop.policy.prepare(decode_weights(blob.data, blob.sha256, 1 << 30)))
    loop.start()
    loop.join(30)
    assert loop.error is None
    steps = [s for c in sink.chunks for s in c.steps]
    assert len(steps) == 20 and all(s.policy_version == 5 for s in steps)
    assert all(s.action.shape == (3,) and np.all(np.abs(s.action) <= 1) for s in steps)


def test_control_loop_keeps_a_fixed_rate_with_it():
    robot = make(max_episode_steps=1000)
    sink = ChunkSink()
    loop = _loop(robot, sink, rate_hz=50, max_episodes=0)
    loop.start()
    assert loop.running.wait(10)
    time.sleep(0.5)  # the window the rate is measured over, not a synchronisation
    loop.stop()
    loop.join(5)
    assert not loop.is_alive() and loop.error is None
    assert 10 <= loop.steps <= 40, loop.steps  # ~25 at 50 Hz, with room for a loaded machine


# -- the driver author's guide -----------------------------------------------------


def test_the_guide_shows_the_whole_driver():
    """docs/drivers.md walks through the driver in pieces; together they are its files, verbatim."""
    import re

    guide = (ROOT / "docs" / "drivers.md").read_text()
    shown: dict[str, list[str]] = {}
    for path, body in re.findall(r'^```python title="([^"]+)"\n(.*?)^```$', guide, re.M | re.S):
        shown.setdefault(path, []).extend(line for line in body.splitlines() if line.strip())
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "hal_drivers" / "point_mass").glob("*.py"))
    assert sorted(shown) == files
    for path, lines in shown.items():
        assert lines == [line for line in (ROOT / path).read_text().splitlines() if line.strip()], path
