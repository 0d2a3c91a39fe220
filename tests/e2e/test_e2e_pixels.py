"""Pixels end to end: a learner process training a CNN policy from camera
frames, an edge-agent process whose simulated arm records two camera views,
real websockets and Parquet in between.

Ends by checking that the robot acted with a learned CNN policy (version > 0,
built from the camera input) and that every transition is stored exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from harness import RobotState, assert_exactly_once, read_ready, spawn, stop
from harness.ledger import KEY_COLUMNS, read_ledger, stored_rows
from shared.weights import decode_weights, sha256

EPISODES = 8
VIEWS = [{"name": "front", "view": "default", "size": 32}, {"name": "top", "view": "external_camera_0", "size": 32}]


@pytest.fixture
def learner(tmp_path: Path):
    cfg = tmp_path / "learner.toml"
    cfg.write_text(tomli_w.dumps({
        "data_dir": "learner",
        "server": {"port": 0, "auth": "open"},
        "learner": {"learning_starts": 100, "publish_every": 5, "batch_size": 16, "hidden": [32, 32],
                    "observation_fields": ["observation"], "image_fields": ["front", "top"],
                    "encoder_channels": [8, 8], "encoder_latent": 16, "device": "cpu", "augment_pad": 2},
    }))
    log = tmp_path / "learner.log"
    proc = spawn([sys.executable, "-m", "cloud", "serve", "--config", str(cfg)], log, stdout=subprocess.PIPE)
    yield read_ready(proc, log), tmp_path / "learner"
    assert stop(proc, timeout=30) == 0, log.read_text()[-3000:]


def test_a_robot_acts_with_a_cnn_policy_learned_from_its_cameras(tmp_path: Path, learner) -> None:
    url, data_dir = learner
    p = tmp_path / "agent.toml"
    p.write_text(tomli_w.dumps({
        "robot_id": "cam-0",
        "link": {"url": url, "allow_unauthenticated": True},
        "robot": {"driver": "mujoco_fetch", "options": {"seed": 3, "cameras": VIEWS, "camera_antialias": False}},
        "control": {"rate_hz": 0, "max_episodes": EPISODES, "chunk_steps": 20, "random_steps": 0, "seed": 3},
        "spool": {"dir": "agent/spool"},
        "state_dir": "agent/state",
    }))
    agent = spawn([sys.executable, "-m", "edge_agent", "run", "--config", str(p)], tmp_path / "agent.log")
    assert agent.wait(300) == 0, (tmp_path / "agent.log").read_text()[-3000:]

    robot = RobotState("cam-0", tmp_path / "agent" / "state")
    totals = assert_exactly_once(data_dir, [robot])
    assert totals["cam-0"]["stored"] == totals["cam-0"]["generated"] == EPISODES * 50
    ledger = read_ledger(robot.state_dir)
    assert ledger["policy_versions_used"] and max(ledger["policy_versions_used"]) > 0, ledger
    _, rows = stored_rows(data_dir, [*KEY_COLUMNS, "policy_version"])
    assert max(r["policy_version"] for r in rows) > 0, "steps were recorded under a learned policy"
    # The policy robots received reads the cameras: its arch is a CNN over the two views.
    blob = (data_dir / "policy" / "latest.safetensors").read_bytes()
    arch = decode_weights(blob, sha256(blob), len(blob)).arch
    assert arch["actor"]["kind"] == "cnn_gaussian"
    assert [v[0] for v in arch["actor"]["images"]] == ["front", "top"]
    assert arch["obs_fields"] == ["observation"]
