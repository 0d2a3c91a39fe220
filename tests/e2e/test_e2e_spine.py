"""The whole loop, real at every hop: a learner process, two edge-agent
processes, real websockets on loopback, real Parquet on disk.

Ends by counting: every transition each agent generated is stored exactly
once, and each agent received and acted with a policy version > 0.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tomli_w

EPISODES = 12


def _start(args: list[str], log: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=open(log, "wb"), cwd=log.parent, **kw
    )


@pytest.fixture
def learner(tmp_path: Path):
    cfg = tmp_path / "learner.toml"
    cfg.write_text(tomli_w.dumps({
        "data_dir": "learner",
        "server": {"port": 0, "auth": "open"},  # unenrolled robots on a loopback learner: opted in on both sides
        "learner": {"learning_starts": 100, "publish_every": 10, "batch_size": 64, "hidden": [64, 64]},
    }))
    proc = _start(["-m", "cloud", "serve", "--config", str(cfg)], tmp_path / "learner.log")
    line = proc.stdout.readline().decode()
    assert line.startswith("READY "), (tmp_path / "learner.log").read_text()
    yield line.split()[1], tmp_path / "learner"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, (tmp_path / "learner.log").read_text()[-3000:]


def _agent_config(tmp_path: Path, i: int, url: str) -> Path:
    p = tmp_path / f"agent-{i}.toml"
    p.write_text(tomli_w.dumps({
        "robot_id": f"robot-{i}",
        "link": {"url": url, "allow_unauthenticated": True},
        "robot": {"driver": "mujoco_fetch", "options": {"seed": i}},
        "control": {"rate_hz": 100, "max_episodes": EPISODES, "chunk_steps": 20, "random_steps": 0, "seed": i},
        "spool": {"dir": f"agent-{i}/spool"},
        "state_dir": f"agent-{i}/state",
    }))
    return p


def _stored(buffer_dir: Path):
    manifest = json.loads((buffer_dir / "manifest.json").read_text())
    tables = [pq.read_table(buffer_dir / "segments" / s["name"]) for s in manifest["segments"]]
    rows = [r for t in tables for r in t.select(["robot_id", "episode_id", "step", "stream_seq", "policy_version"]).to_pylist()]
    return manifest, rows


def test_two_agents_learn_through_the_whole_loop(tmp_path: Path, learner) -> None:
    url, data_dir = learner
    agents = [
        _start(["-m", "edge_agent", "run", "--config", str(_agent_config(tmp_path, i, url))], tmp_path / f"agent-{i}.log")
        for i in range(2)
    ]
    for i, a in enumerate(agents):
        assert a.wait(120) == 0, (tmp_path / f"agent-{i}.log").read_text()[-3000:]

    manifest, rows = _stored(data_dir / "buffer")
    for i in range(2):
        rid = f"robot-{i}"
        ledger = json.loads((tmp_path / f"agent-{i}" / "state" / "ledger.json").read_text())
        mine = [r for r in rows if r["robot_id"] == rid]
        keys = {(r["episode_id"], r["step"]) for r in mine}
        print(f"{rid}: generated={ledger['transitions']} stored={len(mine)} unique={len(keys)} "
              f"episodes={ledger['episodes']} versions={ledger['policy_versions_used'][:5]}...")
        assert ledger["episodes"] == EPISODES
        assert ledger["transitions"] == EPISODES * 50  # FetchReach: 50-step episodes
        assert len(mine) == ledger["transitions"], "every generated transition stored"
        assert len(keys) == len(mine), "no transition stored twice"
        assert sorted({r["stream_seq"] for r in mine}) == list(range(1, ledger["last_seq"] + 1))
        assert manifest["hwm"][rid] == ledger["last_seq"]
        assert ledger["policy_versions_used"] and ledger["policy_versions_used"][0] > 0
        assert max(r["policy_version"] for r in mine) > 0, "the agent acted with a learned policy"
        # Acked data is gone from the robot: its spool holds no segment.
        assert not list((tmp_path / f"agent-{i}" / "spool").glob("*.seg"))
