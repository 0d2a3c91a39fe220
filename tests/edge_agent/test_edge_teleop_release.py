"""The agent gives the teleop device back as soon as its control loop stops, not after the drain.

A real agent (MuJoCo robot, keyboard on a pseudo-terminal, a link nobody answers) records one episode and
drains for seconds: the operator's terminal must have its echo back during that wait, not after it.
"""

from __future__ import annotations

import asyncio
import os
import pty
import termios
import threading
import time
from pathlib import Path

import tomli_w
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.daemon import Agent
from harness import free_port
from shared.config import AgentConfig


def _config(tmp_path: Path, tty: str, **link: object) -> dict:
    return {
        "robot_id": "arm-1",
        "link": {"url": f"ws://127.0.0.1:{free_port()}/ws", "allow_unauthenticated": True, **link},
        "robot": {"driver": "mujoco_fetch", "options": {"task": "reach", "max_episode_steps": 5}},
        "control": {"rate_hz": 0, "max_episodes": 1},
        "teleop": {"device": "keyboard", "options": {"tty": tty}},
        "spool": {"dir": str(tmp_path / "spool")}, "state_dir": str(tmp_path / "state"),
    }


def test_record_that_cannot_start_says_why_and_gives_the_terminal_back(tmp_path: Path) -> None:
    """A missing credential file is found when the agent starts: one line and exit 2, no traceback, and
    the keyboard's terminal is back to normal in this very process (not only at exit)."""
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        path = tmp_path / "agent.toml"
        path.write_text(tomli_w.dumps(_config(tmp_path, os.ttyname(slave),
                                              credential_file=str(tmp_path / "nope.key"))))
        res = CliRunner().invoke(app, ["record", "--config", str(path), "--episodes", "1"])
        assert res.exit_code == 2, res.output
        assert "link.credential_file" in res.output and "does not exist" in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_the_terminal_is_restored_before_the_drain(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        cfg = AgentConfig.model_validate(_config(tmp_path, os.ttyname(slave)))
        agent = Agent(cfg, drain_timeout_s=3.0)
        assert not termios.tcgetattr(slave)[3] & termios.ECHO  # cbreak while the agent holds it
        seen: list[str] = []
        done = threading.Event()

        def watch() -> None:  # the state the agent is in when the echo comes back
            while not done.is_set():
                if termios.tcgetattr(slave)[3] & termios.ECHO:
                    seen.append(agent.state)
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            t0 = time.monotonic()
            rc = asyncio.run(agent.run())
        finally:
            done.set()
            watcher.join(5)
        assert rc == 0 and agent.control.episodes == 1
        assert time.monotonic() - t0 >= 2.5, "the drain waited for the unreachable learner"
        assert seen == ["draining"], seen
    finally:
        os.close(master)
        os.close(slave)
