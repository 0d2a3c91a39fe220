"""Pixels end to end: a learner process training a CNN policy from camera
frames, an edge-agent process whose simulated arm records two camera views,
real websockets and Parquet in between.

Ends by checking that the robot acted with a learned CNN policy (version > 0,
built from the camera input) and that every transition is stored exactly once.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import tomli_w

from harness import RobotState, assert_exactly_once, read_ready, spawn, stop
from harness.ledger import KEY_COLUMNS, read_ledger, stored_rows
from shared.weights import decode_weights, sha256

EPISODES = 8
SYNC_EPISODES = 16  # the first few run before the learner's first policy (and so do not wait)
VIEWS = [{"name": "front", "view": "default", "size": 32}, {"name": "top", "view": "external_camera_0", "size": 32}]


LEARNER = {"learning_starts": 100, "publish_every": 5, "batch_size": 16, "hidden": [32, 32],
           "observation_fields": ["observation"], "image_fields": ["front", "top"],
           "encoder_channels": [8, 8], "encoder_latent": 16, "device": "cpu", "augment_pad": 2}


@contextlib.contextmanager
def serving(tmp_path: Path, **learner: object) -> Iterator[tuple[str, Path]]:
    cfg = tmp_path / "learner.toml"
    cfg.write_text(tomli_w.dumps({
        "data_dir": "learner",
        "server": {"port": 0, "auth": "open"},
        "learner": {**LEARNER, **learner},
    }))
    log = tmp_path / "learner.log"
    proc = spawn([sys.executable, "-m", "cloud", "serve", "--config", str(cfg)], log, stdout=subprocess.PIPE)
    try:
        yield read_ready(proc, log), tmp_path / "learner"
    finally:
        assert stop(proc, timeout=30) == 0, log.read_text()[-3000:]


def run_agent(tmp_path: Path, url: str, **control: object) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(tomli_w.dumps({
        "robot_id": "cam-0",
        "link": {"url": url, "allow_unauthenticated": True},
        "robot": {"driver": "mujoco_fetch", "options": {"seed": 3, "cameras": VIEWS, "camera_antialias": False}},
        "control": {"rate_hz": 0, "max_episodes": EPISODES, "chunk_steps": 20, "random_steps": 0, "seed": 3,
                    **control},
        "spool": {"dir": "agent/spool"},
        "state_dir": "agent/state",
    }))
    agent = spawn([sys.executable, "-m", "edge_agent", "run", "--config", str(p)], tmp_path / "agent.log")
    assert agent.wait(300) == 0, (tmp_path / "agent.log").read_text()[-3000:]


@pytest.fixture
def learner(tmp_path: Path):
    with serving(tmp_path) as s:
        yield s


def test_a_robot_acts_with_a_cnn_policy_learned_from_its_cameras(tmp_path: Path, learner) -> None:
    url, data_dir = learner
    run_agent(tmp_path, url)

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


def test_synchronous_mode_with_a_cnn_policy_acts_each_episode_with_a_newer_one(tmp_path: Path) -> None:
    """The synchronous baseline (once it has a policy, the robot waits after each episode until the learner
    has trained on it and published) runs the pixel policy as it runs the state one."""
    with serving(tmp_path, learning_starts=50, publish_every=10**9, publish_when_idle=True, utd_ratio=0.5) as (url, data_dir):
        # one chunk per episode: an episode's data reaches the learner only once it is over
        run_agent(tmp_path, url, sync=True, sync_timeout_s=120, chunk_steps=50, rate_hz=50, max_episodes=SYNC_EPISODES)
        _, rows = stored_rows(data_dir, [*KEY_COLUMNS, "t_ns", "policy_version"])
    start: dict[str, int] = {}
    used: dict[str, set[int]] = {}
    for r in rows:
        start[r["episode_id"]] = min(start.get(r["episode_id"], r["t_ns"]), r["t_ns"])
        used.setdefault(r["episode_id"], set()).add(r["policy_version"])
    versions = [used[e] for e in sorted(start, key=start.__getitem__)]
    assert len(versions) == SYNC_EPISODES
    # Until the first policy arrives the robot does not wait (nothing to wait for); from the first episode
    # that starts with a learned policy on, each episode acts with one policy, newer than the last one's.
    first = next((i for i, v in enumerate(versions) if min(v) > 0), None)
    assert first is not None and first <= SYNC_EPISODES - 3, versions
    synced = versions[first:]
    assert all(len(v) == 1 for v in synced), versions
    acted = [min(v) for v in synced]
    assert all(b > a for a, b in zip(acted, acted[1:])), acted
