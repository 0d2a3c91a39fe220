"""Reward labels through the agent's local API (POST /label, `edge-agent label`) into the rows it records."""

from __future__ import annotations

import asyncio
import stat
import threading

import numpy as np
import pytest

from edge_agent.control_loop import ControlLoop
from edge_agent.labels import TOKEN_FILE, parse_label, send_label, write_token
from edge_agent.operator import OperatorControls
from edge_agent.policy_holder import PolicyHolder
from edge_agent.recorder import PendingChunk, Recorder
from hal_drivers import registry
from shared.config import ControlConfig
from shared.errors import ConfigError
from shared.metrics import start_metrics_listener


async def _serve(op: OperatorControls, state_dir):
    from edge_agent.labels import label_routes

    token = write_token(state_dir)
    started = await start_metrics_listener(lambda: b"", "127.0.0.1", 0, routes=label_routes(op, token))
    assert started is not None
    return started


async def test_labels_reach_the_operator_with_the_token_only(tmp_path):
    op = OperatorControls()
    runner, url = await _serve(op, tmp_path)
    try:
        assert stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode) == 0o600
        assert await asyncio.to_thread(send_label, url, tmp_path, {"reward": 0.5}) == {"ok": True, "reward": 0.5}
        await asyncio.to_thread(send_label, url, tmp_path, {"reward": 0.25})
        await asyncio.to_thread(send_label, url, tmp_path, {"event": "success"})
        assert op.take() == (False, 0.75, ("success",)) and op.take() == (False, 0.0, ())
        with pytest.raises(ConfigError, match="event must be one of"):
            await asyncio.to_thread(send_label, url, tmp_path, {"event": "maybe"})
        (tmp_path / TOKEN_FILE).write_text("not-the-token")
        with pytest.raises(ConfigError, match="wrong token"):
            await asyncio.to_thread(send_label, url, tmp_path, {"reward": 1.0})
        assert op.take() == (False, 0.0, ())  # refused labels changed nothing
    finally:
        await runner.cleanup()
    with pytest.raises(ConfigError, match="cannot reach the agent"):
        await asyncio.to_thread(send_label, url, tmp_path, {"reward": 1.0}, 2.0)


@pytest.mark.parametrize("body", [{"reward": float("nan")}, {"reward": True}, {"reward": 1, "event": "reset"}, [],
                                  {"volume": 3}])
def test_bad_labels_are_refused_with_what_to_send(body):
    with pytest.raises(ValueError):
        parse_label(body)


def test_an_episode_label_ends_the_episode_in_the_rows():
    robot = registry.create("mujoco_fetch", {"seed": 0, "task": "reach", "max_episode_steps": 10})
    try:
        spec = robot.describe().episode_spec()
        holder = PolicyHolder({k: v.size for k, v in spec.observation.items()}, spec.action_dim)
        chunks: list[PendingChunk] = []
        lock = threading.Lock()

        def sink(pc: PendingChunk) -> None:
            with lock:
                chunks.append(pc)

        op = OperatorControls()
        op.label("success")  # consumed by the first tick
        op.add_reward(0.5)
        loop = ControlLoop(robot, holder, Recorder(5, sink), ControlConfig(rate_hz=0, max_episodes=2, seed=1),
                           operator=op)
        loop.on_episode = lambda end: op.label("reset") if end.index == 1 else None
        loop.start()
        loop.join(60)
        assert not loop.is_alive() and loop.error is None
        steps = [s for c in chunks for s in c.steps]
        first, second = steps[0], steps[1:]
        assert first.terminated and first.success and first.human_reward == pytest.approx(1.5)
        assert not first.truncated and first.reward != first.human_reward  # the driver's reward is its own
        # the reset labelled after episode 1 cuts episode 2 at its first step
        assert len(second) == 1 and second[0].truncated and not second[0].terminated
        assert second[0].human_reward == 0.0 and np.isfinite(second[0].reward)
    finally:
        robot.close()
