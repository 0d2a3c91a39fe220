"""``edge-agent record``: demonstrations driven by a (scripted) human, stored by a real learner.

A learner process, an ``edge-agent record`` process with the scripted Fetch
operator standing in for the hand on the device, real websockets and the
Parquet segments the learner writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from harness import RobotState, assert_exactly_once, free_port
from harness.ledger import read_ledger, stored_rows
from harness.procs import FAST_LINK, Learner, ROOT

STEPS = 8  # per episode (max_episode_steps)


def _config(tmp_path: Path, url: str, teleop: bool = True) -> Path:
    cfg: dict[str, Any] = {
        "robot_id": "demo-arm",
        "link": {"url": url, **FAST_LINK, "allow_unauthenticated": True},
        "robot": {"driver": "mujoco_fetch", "options": {"seed": 4, "task": "reach", "max_episode_steps": STEPS}},
        "control": {"rate_hz": 0, "chunk_steps": 5, "random_steps": 0},
        "spool": {"dir": "spool"},
        "state_dir": "state",
    }
    if teleop:
        cfg["teleop"] = {"device": "scripted_fetch", "options": {"task": "reach", "mode": "always"}}
    p = tmp_path / "agent.toml"
    p.write_text(tomli_w.dumps(cfg))
    return p


def _record(config: Path, episodes: int, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", "record", "--config", str(config),
                           "--episodes", str(episodes), *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def learner(tmp_path: Path):
    lrn = Learner(tmp_path, learner={"learning_starts": 100_000}).start()  # stores, does not need to train
    yield lrn
    lrn.stop()


def test_record_stores_exactly_the_demonstration_rows(tmp_path: Path, learner: Learner) -> None:
    done = _record(_config(tmp_path, learner.url), 2)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any("scripted_fetch" in ln for ln in lines)
    progress = [ln for ln in lines if ln.startswith("episode ")]
    assert [ln.split(":")[0] for ln in progress] == ["episode 1/2", "episode 2/2"], done.stdout
    assert all(f"{STEPS} steps" in ln for ln in progress), done.stdout
    assert "all acknowledged by the learner" in lines[-1]

    state = tmp_path / "state"
    ledger = read_ledger(state)
    assert (ledger["episodes"], ledger["transitions"]) == (2, 2 * STEPS)
    totals = assert_exactly_once(learner.data_dir, [RobotState("demo-arm", state)])
    assert totals["demo-arm"]["stored"] == 2 * STEPS
    _, rows = stored_rows(learner.data_dir, ["robot_id", "episode_id", "step", "demo", "intervention", "action",
                                             "policy_action"])
    assert len(rows) == 2 * STEPS and {r["robot_id"] for r in rows} == {"demo-arm"}
    assert all(r["demo"] and r["intervention"] for r in rows)
    eps: dict[str, list[int]] = {}
    for r in rows:
        eps.setdefault(r["episode_id"], []).append(r["step"])
    assert sorted(sorted(s) for s in eps.values()) == [list(range(STEPS))] * 2
    # no policy yet: the human's action is recorded as the proposal too
    assert all(np.allclose(r["action"], r["policy_action"]) for r in rows)
    assert not list((tmp_path / "spool").glob("*.seg")), "acked: nothing left on the robot"
    status = json.loads((state / "status.json").read_text())
    assert status["state"] == "stopped"
    assert status["teleop"] == {"device": "scripted_fetch", "human_driving": False, "interventions": 2 * STEPS,
                                "takeovers": 1, "read_errors": 0, "recording": True}

    # a later RLPD run imports them (learner.demo_paths): every row in its demo ring, none online
    from cloud.buffer import ReplayBuffer

    rlpd = ReplayBuffer(tmp_path / "rlpd" / "buffer", 1000, demo_capacity=1000, demo_paths=[learner.data_dir])
    assert rlpd.demo_size == 2 * STEPS and rlpd.size == 0
    assert rlpd.demos is not None
    ring = rlpd.demos.storage.data
    assert (ring["demo"][: 2 * STEPS] == 1).all() and (ring["intervention"][: 2 * STEPS] == 1).all()
    stored = np.asarray(sorted(tuple(r["action"]) for r in rows), np.float32)
    np.testing.assert_allclose(np.asarray(sorted(map(tuple, ring["action"][: 2 * STEPS]))), stored)


def test_record_without_teleop_is_a_clear_error(tmp_path: Path) -> None:
    done = _record(_config(tmp_path, "ws://127.0.0.1:1/ws", teleop=False), 1, timeout=60)
    assert done.returncode == 2
    assert "[teleop]" in done.stderr and "Traceback" not in done.stderr


def test_record_with_no_learner_keeps_the_demos_in_the_spool(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nobody listens
    done = _record(_config(tmp_path, url), 1, "--drain-timeout", "2")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "episode 1/1" in done.stdout
    assert "kept in the spool" in done.stderr and "Traceback" not in done.stderr
    assert read_ledger(tmp_path / "state")["transitions"] == STEPS
    assert list((tmp_path / "spool").glob("*.seg")), "the demos wait in the spool for the next run"
