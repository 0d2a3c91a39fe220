"""``cloud-learner serve --cluster local`` as a new user runs it: from the run config alone,
with a real edge-agent linking to its shard, every transition stored once, and the
robot acting with a policy the cluster's learner trained."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tomli_w

pytest.importorskip("ray", reason="Ray is the cluster extra: pip install 'fleetrl[cluster]'")

from harness import Agent, assert_exactly_once, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def run_config(tmp: Path) -> Path:
    cluster = {
        "nodes": [
            {"name": "train-0", "groups": ["train"], "cpus": 1,
             "units": [{"kind": "accelerator", "name": "gpu0", "memory_gb": 80}]},
            {"name": "site-a", "groups": ["site-a"], "cpus": 1},
            # a robot computer: described, never runs Ray
            {"name": "arm-a-1", "groups": ["robots-site-a"],
             "units": [{"kind": "robot", "name": "arm", "driver": "mujoco_fetch"}]},
        ],
        "placement": {
            "learner": {"group": "train", "accelerators": 1, "cpus": 0.5, "min_accelerator_memory_gb": 40},
            "publisher": {"group": "train", "cpus": 0.25},
            "shards": [{"name": "site-a", "group": "site-a", "cpus": 0.25, "robot_ids": ["arm-a-*"]}],
        },
    }
    path = tmp / "run.toml"
    path.write_text(tomli_w.dumps({
        "data_dir": str(tmp / "run"), "server": {"port": 0, "auth": "open"},  # loopback, unenrolled test robot
        "learner": {"learning_starts": 200, "batch_size": 64, "publish_every": 20, "utd_ratio": 0.5},
        "cluster": cluster,
    }))
    return path


class Serve:
    """``python -m cloud serve --cluster local`` with its stdout read on a thread (READY carries the endpoints)."""

    def __init__(self, config: Path, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "cloud", "serve", "--config", str(config), "--cluster", "local"],
                                     stdout=subprocess.PIPE, stderr=log.open("wb"), text=True, cwd=REPO)
        self.endpoints: dict[str, str] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY "):
                self.endpoints = json.loads(line[len("READY "):])
                self.ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def test_serve_cluster_local_starts_the_configs_nodes_and_a_robot_learns_through_its_shard(tmp_path: Path) -> None:
    serve = Serve(run_config(tmp_path), tmp_path / "serve.log")
    agent = None
    try:
        assert serve.ready.wait(180), f"no READY: rc={serve.proc.poll()} {serve.log.read_text()[-3000:]}"
        err = serve.log.read_text()
        assert "local Ray cluster of 2 node(s) (train-0, site-a)" in err, err[-2000:]
        assert "learner on train-0" in err and "shards.site-a on site-a" in err, err[-2000:]
        url = serve.endpoints["site-a"]
        agent = Agent(tmp_path / "robots", "arm-a-1", [url], episodes=0, rate_hz=100).start()
        wait_for(lambda: agent.status().get("policy_version", 0) > 0 or agent.proc.poll() is not None, 150,
                 "the robot acting with a policy the cluster's learner trained")
        assert agent.proc.poll() is None, agent.log.read_text()[-3000:]
        agent.proc.send_signal(signal.SIGTERM)  # stop: the agent drains its spool to the shard, then exits
        assert agent.wait(120) == 0, agent.log.read_text()[-3000:]
    finally:
        if agent is not None and agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
        rc = serve.stop()
    assert rc == 0, serve.log.read_text()[-3000:]
    totals = assert_exactly_once(tmp_path / "run" / "shards" / "site-a", [agent])
    assert totals["arm-a-1"]["stored"] > 200
    assert agent is not None and max(agent.ledger()["policy_versions_used"]) > 0
    assert not list((tmp_path / "run").glob("buffer")), "the run's own data dir holds no buffer: the shard does"
