"""``cloud-learner demo``: the configs it writes (state and pixels) and the curve it records."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from PIL import Image

from cloud import demo
from cloud.demo_fleet import fleet_rate, group_lines, parse_fleet
from hal_drivers.mujoco_fetch import FetchConfig
from shared import config as cfgmod


@pytest.mark.parametrize("gpu", [False, True])
def test_pixel_configs_are_valid_and_hide_the_goal(tmp_path, monkeypatch, gpu):
    monkeypatch.setattr(demo, "_gpu_seen", lambda: gpu)
    learner_path, agent_paths = demo._write_configs(tmp_path, 2, 25.0, "reach", 3, "pixels")
    learner = cfgmod.load(cfgmod.LearnerConfig, learner_path).learner
    assert learner.policy_kind == "cnn_gaussian"
    assert learner.observation_fields == ["observation"]  # the gripper's state only: no desired_goal
    names = [c["name"] for c in demo.PIXEL_CAMERAS]
    assert learner.image_fields == names
    assert learner.batch_size == (256 if gpu else 128) and learner.seed == 3
    assert len(agent_paths) == 2
    for i, p in enumerate(agent_paths):
        agent = cfgmod.load(cfgmod.AgentConfig, p)
        fetch = FetchConfig(**agent.robot.options)
        assert [v.name for v in fetch.views] == names and not fetch.camera
        assert fetch.seed == 300 + i and agent.control.rate_hz == 25.0


def test_state_configs_unchanged(tmp_path):
    learner_path, agent_paths = demo._write_configs(tmp_path, 1, 50.0, "reach", 0)
    learner = cfgmod.load(cfgmod.LearnerConfig, learner_path).learner
    assert learner.policy_kind == "mlp_gaussian" and learner.image_fields == [] and learner.observation_fields is None
    fetch = FetchConfig(**cfgmod.load(cfgmod.AgentConfig, agent_paths[0]).robot.options)
    assert fetch.views == []


def test_mixed_fleet_configs_run_one_group_per_embodiment(tmp_path):
    learner_path, agent_paths = demo._write_configs(tmp_path, "reach:2,point_mass:2", 50.0, "reach", 1)
    run = cfgmod.load(cfgmod.LearnerConfig, learner_path)
    assert run.groups.mode == "auto"
    agents = [cfgmod.load(cfgmod.AgentConfig, p) for p in agent_paths]
    assert [a.robot_id for a in agents] == ["reach-0", "reach-1", "point_mass-0", "point_mass-1"]
    assert [a.robot.driver for a in agents] == ["mujoco_fetch"] * 2 + ["point_mass"] * 2
    assert agents[2].robot.options == {"dims": 3, "seed": 102} and agents[0].robot.options["task"] == "reach"
    assert demo._write_configs(tmp_path / "plain", 2, 50.0, "push", 0)[1]  # a plain count: as before
    plain = cfgmod.load(cfgmod.AgentConfig, tmp_path / "plain" / "agent-1.toml")
    assert plain.robot_id == "sim-1" and plain.robot.options["task"] == "push"
    assert cfgmod.load(cfgmod.LearnerConfig, tmp_path / "plain" / "learner.toml").groups.mode == "fixed"


@pytest.mark.parametrize("robots, message", [
    ("reach:2,arm:1", "'arm' is not a robot kind"), ("reach:9", "9 robots: use 1 to 8"), ("reach=2", "use KIND:COUNT"),
    ("reach:1,reach:1", "reach is listed twice"), ("0", "0 robots"),
])
def test_bad_fleets_are_refused_saying_why(robots, message):
    with pytest.raises(ValueError, match=message):
        parse_fleet(robots)


def test_fleet_rate_follows_the_slowest_group():
    one = {"success_rate": 0.5, "episodes": 7, "groups": {"a": {"success_rate": 0.5, "episodes": 7}}}
    assert fleet_rate(one) == (0.5, 7)
    two = {"success_rate": 0.9, "episodes": 30, "groups": {"a": {"success_rate": 0.9, "episodes": 20, "robots": ["x"]},
                                                           "b": {"success_rate": None, "episodes": 10}}}
    assert fleet_rate(two) == (None, 10)
    two["groups"]["b"]["success_rate"] = 0.4
    assert fleet_rate(two) == (0.4, 10)
    assert [line.split(":")[0] for line in group_lines(two)] == ["group a (x)", "group b (no robot linked)"]


def test_unknown_obs_mode_refused(tmp_path):
    with pytest.raises(ValueError, match="'rgb' is not one of state, pixels"):
        demo.run_demo(1, 0.1, 0.8, None, "reach", tmp_path, 0, obs="rgb")


def test_curve_keeps_one_point_per_episode_count():
    c = demo.Curve()
    for t, rate, eps in [(0.0, None, 0), (0.5, None, 0), (1.0, 0.0, 2), (1.5, 0.0, 2), (2.0, 0.5, 4)]:
        c.add(t, rate, eps)
    assert c.to_dict() == {"t_s": [0.0, 1.0, 2.0], "success_rate": [None, 0.0, 0.5], "episodes": [0, 2, 4]}


class _Alive:
    returncode = None


def test_watch_writes_curve_png_and_series(tmp_path):
    """A scripted learner /status: the success rate climbs; the demo stops at the target and
    leaves success.png and the series in summary.json."""
    polls = {"n": 0}

    async def status(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        n = polls["n"] = polls["n"] + 1
        eps = 20 * n
        return web.json_response({"episodes": eps, "success_rate": min(1.0, 0.2 * n), "buffer_rows": 50 * eps})

    async def main() -> int:
        app = web.Application()
        app.router.add_get("/status", status)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return await demo._watch((f"http://127.0.0.1:{port}/status", "tok"), [_Alive()], _Alive(), 1.0, 0.8,
                                     tmp_path, "scripted")
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    curve = summary["curve"]
    assert curve["episodes"] == [20, 40, 60, 80] and curve["success_rate"] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert curve["t_s"] == sorted(curve["t_s"]) and summary["reached_s"] is not None
    assert summary["curve_png"] == "success.png" and summary["failed"] is None
    with Image.open(tmp_path / "success.png") as img:
        assert img.format == "PNG" and img.size == (800, 450)


def test_watch_reports_a_dead_process_and_still_draws(tmp_path):
    class _Dead:
        returncode = 2

    async def main() -> int:
        return await demo._watch(("http://127.0.0.1:9/status", "tok"), [_Dead()], _Alive(), 1.0, 0.8, tmp_path)

    assert asyncio.run(main()) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == "a process exited early (code 2)"
    assert (tmp_path / "success.png").read_bytes()[:4] == b"\x89PNG"
