"""The simulated Fetch arm (gymnasium-robotics, MuJoCo) behind the Robot interface."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hal_drivers import registry
from hal_drivers.base import StepResult, UnitKind
from hal_drivers.mujoco_fetch import FetchConfig, FetchRobot

ROOT = Path(__file__).resolve().parents[2]
STATE_KEYS = ("observation", "achieved_goal", "desired_goal")


@pytest.fixture
def make():
    robots: list[FetchRobot] = []

    def _make(**options) -> FetchRobot:
        robot = registry.create("mujoco_fetch", options)
        assert isinstance(robot, FetchRobot)
        robots.append(robot)
        return robot

    yield _make
    for r in robots:
        r.close()


def _rollout(robot: FetchRobot, actions: np.ndarray) -> list[dict[str, np.ndarray]]:
    obs = [robot.reset()]
    for a in actions:
        obs.append(robot.step(a).observation)
    obs.append(robot.reset())  # a second reset continues the seeded RNG
    return obs


def test_config_defaults():
    cfg = FetchConfig()
    assert (cfg.task, cfg.dense_reward, cfg.seed, cfg.max_episode_steps) == ("reach", True, 0, 50)
    assert cfg.identity == "sim-fetch-reach-0"
    assert FetchConfig(task="push", seed=3).identity == "sim-fetch-push-3"
    assert FetchConfig(identity="bench-7").identity == "bench-7"
    assert (cfg.camera, cfg.camera_size, cfg.camera_codec, cfg.jpeg_quality) == (False, 128, "raw", 90)


@pytest.mark.parametrize(
    "task, dense, env_id, obs_dim",
    [("reach", True, "FetchReachDense-v4", 10), ("push", False, "FetchPush-v4", 25)],
)
def test_describe_matches_real_observations(make, task, dense, env_id, obs_dim):
    robot = make(task=task, dense_reward=dense, seed=4)
    d = robot.describe()
    assert d is robot.describe()  # cached
    assert (d.name, d.kind, d.driver, d.identity) == ("arm", UnitKind.ROBOT, "mujoco_fetch", f"sim-fetch-{task}-4")
    assert d.control_hz == pytest.approx(25.0)
    assert d.extra == {"task": task, "env_id": env_id}
    assert set(d.observation) == set(STATE_KEYS)
    assert d.observation["observation"].shape == (obs_dim,)
    assert d.action_shape == (4,)
    assert d.action_low == (-1.0,) * 4 and d.action_high == (1.0,) * 4
    obs = robot.reset()
    assert set(obs) == set(d.observation)
    for k, spec in d.observation.items():
        assert obs[k].shape == spec.shape and obs[k].dtype == np.dtype(spec.dtype)
        assert not spec.is_image
    assert d.to_dict()["observation"]["achieved_goal"] == {"shape": [3], "dtype": "float32"}


def test_driver_name_keyword():
    robot = FetchRobot(FetchConfig(identity="x"), name="left")
    try:
        assert robot.describe().name == "left" and robot.describe().identity == "x"
    finally:
        robot.close()


def test_reset_and_step_types(make):
    robot = make()
    obs = robot.reset()
    for k in STATE_KEYS:
        assert obs[k].dtype == np.float32 and obs[k].flags.owndata  # copies, not views
    res = robot.step(np.zeros(4, np.float32))
    assert isinstance(res, StepResult)
    assert type(res.reward) is float and res.reward <= 0.0  # dense reward: -distance
    assert type(res.terminated) is bool and type(res.truncated) is bool
    assert type(res.success) is bool
    assert res.info == {}
    assert {k: (v.shape, v.dtype) for k, v in res.observation.items()} == {
        k: (v.shape, v.dtype) for k, v in obs.items()
    }


def test_sparse_reward(make):
    robot = make(dense_reward=False)
    robot.reset()
    assert robot.step(np.zeros(4)).reward in (-1.0, 0.0)


def test_truncation_exactly_at_max_episode_steps(make):
    robot = make(max_episode_steps=5)
    for _ in range(2):  # the limit restarts with every reset
        robot.reset()
        flags = [robot.step(np.zeros(4)).truncated for _ in range(5)]
        assert flags == [False, False, False, False, True]


def test_seed_reproduces_trajectories(make):
    actions = np.random.default_rng(1).uniform(-1, 1, size=(8, 4)).astype(np.float32)
    a = _rollout(make(seed=7), actions)
    b = _rollout(make(seed=7), actions)
    c = _rollout(make(seed=8), actions)
    for oa, ob in zip(a, b):
        for k in STATE_KEYS:
            np.testing.assert_array_equal(oa[k], ob[k])
    assert not np.array_equal(a[0]["desired_goal"], c[0]["desired_goal"])
    # later resets continue the RNG instead of re-seeding
    assert not np.array_equal(a[0]["desired_goal"], a[-1]["desired_goal"])


def test_actions_are_clamped(make):
    raw = np.array([np.nan, 5.0, -7.0, 0.25], np.float32)
    clamped = np.array([0.0, 1.0, -1.0, 0.25], np.float32)
    r1, r2 = make(seed=2), make(seed=2)
    np.testing.assert_array_equal(r1.clamp(raw), clamped)
    r1.reset(), r2.reset()
    for _ in range(3):
        s1, s2 = r1.step(raw), r2.step(clamped)
        for k in STATE_KEYS:
            assert np.isfinite(s1.observation[k]).all()
            np.testing.assert_array_equal(s1.observation[k], s2.observation[k])
        assert s1.reward == s2.reward


def test_success_flag(make):
    robot = make(seed=3, max_episode_steps=50)
    obs = robot.reset()
    successes = []
    for _ in range(50):  # a proportional controller reaches the goal
        delta = obs["desired_goal"] - obs["achieved_goal"]
        res = robot.step(np.append(np.clip(delta * 10.0, -1, 1), 0.0))
        assert type(res.success) is bool
        successes.append(res.success)
        obs = res.observation
        if res.success:
            break
    assert successes[0] is False and successes[-1] is True


def test_push_steps(make):
    robot = make(task="push", max_episode_steps=3)
    obs = robot.reset()
    assert obs["observation"].shape == (25,)
    results = [robot.step(np.ones(4)) for _ in range(3)]
    assert [r.truncated for r in results] == [False, False, True]


def test_close_is_idempotent(make):
    robot = make()
    robot.close()
    robot.close()


def _run_py(code: str, mujoco_gl: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["MUJOCO_GL"] = mujoco_gl
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYOPENGL_PLATFORM", None)
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def test_camera_renders_headless():
    # In a subprocess: MuJoCo fixes its GL backend at import, which must not leak into other tests.
    code = """
        import numpy as np
        from hal_drivers import registry
        from hal_drivers.mujoco_fetch import FetchConfig, FetchRobot

        r = registry.create("mujoco_fetch", {"camera": True, "camera_size": 64, "camera_codec": "jpeg", "jpeg_quality": 80})
        spec = r.describe().observation["camera"]
        assert (spec.shape, spec.dtype, spec.codec, spec.quality, spec.is_image) == ((64, 64, 3), "uint8", "jpeg", 80, True), spec
        obs = r.reset()
        frame = obs["camera"]
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8, (frame.shape, frame.dtype)
        assert frame.std() > 1.0 and len(np.unique(frame)) > 10, "constant frame"
        # a second camera robot in the same process must not disturb the first one's frames
        other = FetchRobot(FetchConfig(camera=True, camera_size=32, seed=5), name="other")
        assert other.reset()["camera"].shape == (32, 32, 3)
        same = FetchRobot(FetchConfig(camera=True, camera_size=64))
        np.testing.assert_array_equal(same.reset()["camera"], frame)
        step = r.step(np.array([1.0, 0.0, 0.0, 0.0]))
        assert step.observation["camera"].shape == (64, 64, 3)
        assert not np.array_equal(step.observation["camera"], frame)  # the arm moved
        assert r.describe().to_dict()["observation"]["camera"] == {"shape": [64, 64, 3], "dtype": "uint8", "codec": "jpeg", "quality": 80}
        # built on this thread, driven from another (as the agent's control loop does), then back
        import threading
        frames = []
        t = threading.Thread(target=lambda: frames.append(r.step(np.zeros(4)).observation["camera"]))
        t.start(); t.join()
        assert frames and frames[0].std() > 1.0, "rendering from the control thread failed"
        assert r.step(np.zeros(4)).observation["camera"].std() > 1.0
        for x in (r, other, same):
            x.close()
        print("CAMERA-OK")
    """
    proc = _run_py(code, os.environ.get("FLEETRL_TEST_MUJOCO_GL", "egl"))
    assert proc.returncode == 0 and "CAMERA-OK" in proc.stdout, proc.stderr[-3000:]


def test_camera_without_gl_backend_is_config_error():
    code = """
        from hal_drivers import registry
        from shared.errors import ConfigError
        for options in ({"camera": True, "camera_size": 32},):
            try:
                registry.create("mujoco_fetch", options)
            except ConfigError as e:
                print("CONFIG-ERROR", e.message)
            else:
                print("NO-ERROR")
    """
    # An invalid backend name fails at import; glfw without a display fails creating the context.
    bad = _run_py(code, "bogus")
    assert "CONFIG-ERROR" in bad.stdout and "MUJOCO_GL" in bad.stdout, (bad.stdout, bad.stderr[-2000:])
    no_display = _run_py(code, "glfw", DISPLAY="", WAYLAND_DISPLAY="")
    assert "CONFIG-ERROR robot.options.camera: camera rendering needs" in no_display.stdout, (
        no_display.stdout, no_display.stderr[-2000:],
    )
    assert "MUJOCO_GL=egl or osmesa" in no_display.stdout


# -- named camera views --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cameras": [{"name": "desired_goal"}]}, "'desired_goal' is a state field"),
        ({"cameras": [{"name": "a"}, {"name": "a", "view": "external_camera_0"}]}, "'a' is used twice"),
        ({"camera": True, "cameras": [{"name": "camera"}]}, "camera = true already adds"),
        ({"cameras": [{"name": "a", "view": "external_camera_0", "distance": 1.0}]}, "model camera 'external_camera_0'"),
        ({"cameras": [{"name": "a.b"}]}, "cameras.0.name"),
        ({"cameras": [{"name": "a", "size": 8}]}, "cameras.0.size"),
    ],
)
def test_camera_options_refused(options, message):
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        registry.create("mujoco_fetch", options)  # refused by the options check, before MuJoCo is touched


def test_camera_views_field_order():
    cfg = FetchConfig(camera=True, camera_size=32, cameras=[{"name": "top", "view": "external_camera_0", "size": 48}])
    assert [(v.name, v.view, v.size) for v in cfg.views] == [("camera", "default", 32), ("top", "external_camera_0", 48)]
    assert FetchConfig().views == []


def test_named_camera_views():
    code = """
        import threading
        import numpy as np
        import gymnasium as gym
        from hal_drivers import registry
        from shared.errors import ConfigError

        def red(img):  # the goal sphere is pure red (rgba 1 0 0 1); nothing else in the scene is
            i = img.astype(int)
            return (i[..., 0] - np.maximum(i[..., 1], i[..., 2])) > 50

        side = {"name": "side", "view": "default", "size": 40, "codec": "jpeg", "jpeg_quality": 70,
                "lookat": [1.34, 0.75, 0.55], "distance": 1.0, "azimuth": 90, "elevation": -20}
        r = registry.create("mujoco_fetch", {"seed": 2, "cameras": [
            {"name": "top", "view": "external_camera_0", "size": 64, "codec": "png"}, side]})
        d = r.describe()
        assert list(d.observation) == ["observation", "achieved_goal", "desired_goal", "top", "side"], list(d.observation)
        top, sd = d.observation["top"], d.observation["side"]
        assert (top.shape, top.dtype, top.codec, top.quality, top.is_image) == ((64, 64, 3), "uint8", "png", None, True), top
        assert (sd.shape, sd.codec, sd.quality) == ((40, 40, 3), "jpeg", 70), sd
        centroids, goals = [], []
        for ep in range(4):
            obs = r.reset()
            assert obs["top"].shape == (64, 64, 3) and obs["side"].shape == (40, 40, 3)
            assert obs["top"].dtype == np.uint8 and obs["top"].flags.owndata
            for name in ("top", "side"):  # (the gripper may hide part of it)
                assert red(obs[name]).sum() >= 1, (ep, name, "goal sphere not drawn")
            ys, xs = np.nonzero(red(obs["top"]))
            centroids.append((xs.mean(), ys.mean()))
            goals.append(obs["desired_goal"])
            if ep == 0:
                first_top = obs["top"]
        # the marker follows the goal: goals that differ land on different pixels
        moved = [np.hypot(*np.subtract(centroids[i], centroids[0])) for i in range(1, 4)]
        assert min(moved) > 1.5, (moved, goals)
        step = r.step(np.array([1.0, 0.0, 0.0, 0.0]))
        assert set(step.observation) == set(d.observation)
        assert not np.array_equal(step.observation["top"], obs["top"])  # the arm moved
        frames = []  # driven from another thread, as the agent's control loop does
        t = threading.Thread(target=lambda: frames.append(r.step(np.zeros(4)).observation))
        t.start(); t.join()
        assert frames and red(frames[0]["top"]).sum() >= 1, "rendering from the control thread failed"
        r.close()

        # without anti-aliasing: other pixels, same scene, the goal still drawn
        fast = registry.create("mujoco_fetch", {"seed": 2, "camera_antialias": False, "cameras": [
            {"name": "top", "view": "external_camera_0", "size": 64}]})
        jagged = fast.reset()["top"]
        assert red(jagged).sum() >= 1 and not np.array_equal(jagged, first_top)
        assert np.abs(jagged.astype(int) - first_top).mean() < 8, "a different scene, not just other edges"
        fast.close()

        # "default" is the env's own render view, pixel for pixel
        mine = registry.create("mujoco_fetch", {"seed": 9, "cameras": [{"name": "front", "size": 64}]})
        env = gym.make("FetchReachDense-v4", render_mode="rgb_array", width=64, height=64)
        env.reset(seed=9)
        np.testing.assert_array_equal(mine.reset()["front"], env.render())
        env.close(); mine.close()

        try:
            registry.create("mujoco_fetch", {"cameras": [{"name": "wrist", "view": "wrist_cam"}]})
        except ConfigError as e:
            print("REFUSED", e.message)
        print("VIEWS-OK")
    """
    proc = _run_py(code, os.environ.get("FLEETRL_TEST_MUJOCO_GL", "egl"))
    assert proc.returncode == 0 and "VIEWS-OK" in proc.stdout, proc.stderr[-3000:]
    refused = proc.stdout.split("REFUSED ", 1)[1].splitlines()[0]
    assert "'wrist' asks for view 'wrist_cam'" in refused, refused
    for cam in ("default", "external_camera_0", "head_camera_rgb", "gripper_camera_rgb"):
        assert cam in refused, refused
