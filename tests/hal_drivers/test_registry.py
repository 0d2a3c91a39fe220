"""The driver registry: built-in names, entry points, option validation."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hal_drivers import registry
from hal_drivers.base import HardwareUnit
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_found_by_name():
    from hal_drivers.mujoco_fetch import FetchRobot

    cls = registry.get("mujoco_fetch")
    assert cls is FetchRobot
    assert issubclass(cls, HardwareUnit)


def test_available_lists_builtin():
    names = registry.available()
    assert "mujoco_fetch" in names
    assert names == sorted(names)


def test_unknown_driver_is_config_error():
    with pytest.raises(ConfigError) as ei:
        registry.get("no_such_robot")
    assert "no_such_robot" in ei.value.message
    assert "mujoco_fetch" in ei.value.message  # lists what is available
    assert ei.value.code == "bad_config"
    with pytest.raises(ConfigError, match="no_such_robot"):
        registry.create("no_such_robot", {})


def test_unknown_option_names_its_key():
    with pytest.raises(ConfigError) as ei:
        registry.create("mujoco_fetch", {"bogus": 1})
    assert "robot.options.bogus" in ei.value.message


@pytest.mark.parametrize(
    "options, key",
    [
        ({"max_episode_steps": 0}, "robot.options.max_episode_steps"),
        ({"task": "pick"}, "robot.options.task"),
        ({"camera_size": 8}, "robot.options.camera_size"),
        ({"camera_codec": "gif"}, "robot.options.camera_codec"),
        ({"jpeg_quality": 101}, "robot.options.jpeg_quality"),
    ],
)
def test_bad_value_names_its_key(options, key):
    with pytest.raises(ConfigError) as ei:
        registry.create("mujoco_fetch", options)
    assert ei.value.message.startswith(key + ":")


def test_importing_driver_does_not_import_mujoco():
    # MuJoCo picks its GL backend at import; merely registering the driver must not.
    code = (
        "import sys, hal_drivers.mujoco_fetch, hal_drivers.registry as r\n"
        "assert 'mujoco_fetch' in r._registry\n"
        "bad = [m for m in ('mujoco', 'gymnasium_robotics', 'OpenGL') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -- a third-party driver declared through a real entry point --------------------

_PLUGIN = textwrap.dedent(
    """
    import numpy as np

    from hal_drivers.base import DriverConfig, Robot, StepResult, UnitDescription, UnitKind


    class EchoConfig(DriverConfig):
        gain: float = 1.0


    class EchoRobot(Robot):
        config_class = EchoConfig

        def __init__(self, config, name="echo"):
            self.config, self.name = config, name

        def describe(self):
            return UnitDescription(
                self.name, UnitKind.ROBOT, "echo_test", "echo-1",
                action_shape=(1,), action_low=(-1.0,), action_high=(1.0,),
            )

        def reset(self):
            return {"x": np.zeros(1, np.float32)}

        def step(self, action):
            a = self.clamp(action) * self.config.gain
            return StepResult({"x": a}, 0.0, False, False)
    """
)


@pytest.fixture
def entry_point_plugin(tmp_path, monkeypatch):
    mod = "fleetrl_echo_plugin_test"
    (tmp_path / f"{mod}.py").write_text(_PLUGIN)
    dist = tmp_path / "fleetrl_echo_plugin_test-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fleetrl-echo-plugin-test\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\necho_test = {mod}:EchoRobot\n")
    # A private registry, so the loaded plugin does not outlive the test.
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates importlib caches
    importlib.invalidate_caches()
    yield "echo_test"
    sys.modules.pop(mod, None)
    monkeypatch.undo()  # sys.path and the registry back before clearing caches
    importlib.invalidate_caches()


def test_entry_point_driver(entry_point_plugin):
    import numpy as np

    name = entry_point_plugin
    assert name not in registry._registry
    assert name in registry.available()
    cls = registry.get(name)
    assert cls.__name__ == "EchoRobot" and cls.__module__ == "fleetrl_echo_plugin_test"
    robot = registry.create(name, {"gain": 0.5})
    assert robot.describe().driver == "echo_test"
    res = robot.step(np.array([4.0]))
    assert res.observation["x"].tolist() == [0.5]  # clamped to 1, then gain
    with pytest.raises(ConfigError, match=r"robot\.options\.bogus"):
        registry.create(name, {"bogus": True})


def test_entry_point_gone_after_cleanup():
    assert "echo_test" not in registry.available()
    with pytest.raises(ConfigError):
        registry.get("echo_test")
