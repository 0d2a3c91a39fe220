"""A teleop device that cannot be built, or robot options its driver refuses, are reported by check-config
and check, not at the robot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w
from typer.testing import CliRunner

from edge_agent.check import run_checks
from edge_agent.cli import app
from harness import free_port


def _config(tmp_path: Path, teleop: dict[str, Any] | None, robot: dict[str, Any] | None = None) -> Path:
    cfg: dict[str, Any] = {
        "robot_id": "arm-9",
        "link": {"url": f"ws://127.0.0.1:{free_port()}/ws", "allow_unauthenticated": True},
        "robot": robot or {"driver": "mujoco_fetch", "options": {"task": "reach"}},
        "spool": {"dir": str(tmp_path / "spool")},
        "state_dir": str(tmp_path / "state"),
    }
    if teleop is not None:
        cfg["teleop"] = teleop
    p = tmp_path / "agent.toml"
    p.write_text(tomli_w.dumps(cfg))
    return p


def _check_config(path: Path):
    return CliRunner().invoke(app, ["check-config", str(path)])


def test_check_config_reports_a_teleop_device_that_cannot_be_built(tmp_path: Path) -> None:
    res = _check_config(_config(tmp_path, {"device": "joystick9000"}))
    assert res.exit_code == 2 and "teleop.device" in res.output and "joystick9000" in res.output
    res = _check_config(_config(tmp_path, {"device": "scripted_fetch", "options": {"mode": "sometimes"}}))
    assert res.exit_code == 2 and "teleop.options.mode" in res.output
    res = _check_config(_config(tmp_path, {"device": "scripted_fetch", "options": {"task": "reach"}}))
    assert res.exit_code == 0, res.output
    assert '"scripted_fetch"' in res.output


def test_check_config_checks_the_robot_drivers_options_without_starting_the_robot(tmp_path: Path) -> None:
    res = _check_config(_config(tmp_path, None, {"driver": "mujoco_fetch",
                                                 "options": {"task": "push", "dynamics": {"wind": 2}}}))
    assert res.exit_code == 2 and "robot.options.dynamics.wind: unknown key" in res.output, res.output
    res = _check_config(_config(tmp_path, None, {"driver": "point_mass", "options": {"dims": 0}}))
    assert res.exit_code == 2 and "robot.options.dims" in res.output, res.output
    res = _check_config(_config(tmp_path, None, {"driver": "no_such_arm"}))
    assert res.exit_code == 2 and "robot.driver" in res.output and "no_such_arm" in res.output, res.output
    res = _check_config(_config(tmp_path, None, {"driver": "mujoco_fetch",
                                                 "options": {"task": "push", "dynamics": {"action_gain": 0.7}}}))
    assert res.exit_code == 0 and '"action_gain": 0.7' in res.output, res.output


def test_check_has_a_teleop_row(tmp_path: Path) -> None:
    rows = {r.name.split()[0]: r for r in run_checks(_config(tmp_path, None), timeout=0.5)}
    assert "teleop" not in rows, "no row without a [teleop] table"
    rows = {r.name.split()[0]: r for r in run_checks(
        _config(tmp_path, {"device": "scripted_fetch", "options": {"task": "reach"}}), timeout=0.5)}
    assert rows["teleop"].ok is True and "opened" in rows["teleop"].detail
    rows = {r.name.split()[0]: r for r in run_checks(_config(tmp_path, {"device": "joystick9000"}), timeout=0.5)}
    assert rows["teleop"].ok is False and "joystick9000" in rows["teleop"].detail
