"""A shard's gateway keeps a single learner's guarantees: TLS with the run's
certificate, the refusal of plain ws:// beyond loopback (before Ray starts),
and the run's one robot table, so enrolment and revocation reach the shard.

The shard runs in this process (the same ``BufferShard`` Ray starts as an
actor); the robot is a real edge-agent over a real wss:// link."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tomli_w

from cloud.cluster.shard import BufferShard, shard_config
from cloud.keys import ROBOTS
from shared import config as cfgmod
from shared.errors import ConfigError
from tests.faults.harness import Agent, wait_for
from tests.security.test_security_link import enroll
from tests.security.test_security_tls_tunnel import self_signed

REPO = Path(__file__).resolve().parents[2]


def cluster_table(host: str | None = None) -> dict:
    shard = {"name": "site-a", "group": "site-a", "cpus": 0.25, "robot_ids": ["arm-a-*"]}
    if host is not None:
        shard["host"] = host
    return {
        "nodes": [{"name": "train-0", "groups": ["train"], "cpus": 1}, {"name": "site-a", "groups": ["site-a"], "cpus": 1}],
        "placement": {"shards": [shard]},
    }


def run_toml(tmp: Path, server: dict, host: str | None = None) -> Path:
    path = tmp / "run.toml"
    path.write_text(tomli_w.dumps({"data_dir": str(tmp / "run"), "server": {"port": 0, **server},
                                   "learner": {"learning_starts": 10**9}, "cluster": cluster_table(host)}))
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud", *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_a_shard_beyond_loopback_without_tls_is_refused_before_ray_starts(tmp_path: Path) -> None:
    cfg = cfgmod.load(cfgmod.LearnerConfig, run_toml(tmp_path, {}, host="0.0.0.0"))
    with pytest.raises(ConfigError, match=r"site-a.*plain ws://"):
        shard_config(cfg, "site-a", "0.0.0.0", 0)
    t0 = time.monotonic()
    r = cli("serve", "--config", str(tmp_path / "run.toml"), "--cluster", "local")
    print(f"serve --cluster: rc={r.returncode} in {time.monotonic() - t0:.1f}s: {r.stderr.strip()[-300:]}")
    assert r.returncode == 2 and "site-a" in r.stderr and "plain ws://" in r.stderr
    assert not (tmp_path / "run" / "shards").exists(), "a shard started before the check"
    pytest.importorskip("ray", reason="Ray is the cluster extra: pip install 'fleetrl[cluster]'")
    from cloud.cluster.config import parse_cluster
    from cloud.cluster.runtime import ClusterRuntime

    rt = ClusterRuntime(cfg, parse_cluster(cfg.cluster))
    with pytest.raises(ConfigError, match="site-a"):
        rt.start()  # refused before Ray is asked for anything
    assert rt.pgs == {} and rt.shards == {}
    # the same shard with allow_insecure set explicitly is the operator's choice
    ok = shard_config(cfg.model_copy(update={"server": cfg.server.model_copy(update={"allow_insecure": True})}),
                      "site-a", "0.0.0.0", 0)
    assert ok.server.host == "0.0.0.0" and ok.data_dir == tmp_path / "run" / "shards" / "site-a"


class _Loop:
    """An event loop on a thread: the shard's home, as inside its Ray actor."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_shard_serves_wss_and_follows_the_runs_robot_table(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "site-a")
    config = run_toml(tmp_path, {"auth": "required", "tls_cert": str(cert), "tls_key": str(key)})
    cfg = cfgmod.load(cfgmod.LearnerConfig, config)
    r = cli("robots", "add", "arm-a-1", "--config", str(config))  # writes the run's robots.json, as an operator does
    assert r.returncode == 0, r.stderr
    credential = next(line for line in r.stdout.splitlines() if line.startswith("fr1_"))
    home, shard = _Loop(), BufferShard("site-a", cfg)
    robot = None
    try:
        url = home.run(shard.endpoint())
        print("shard endpoint:", url)
        assert url.startswith("wss://")
        robot = Agent(tmp_path, "arm-a-1", [url], episodes=0, rate_hz=50, chunk_steps=10)
        enroll(robot, url, credential)  # over TLS; records the shard's certificate pin
        robot.start()
        wait_for(lambda: "arm-a-1" in shard._runner.app[ROBOTS], 60, "the enrolled robot to link to the shard")
        wait_for(lambda: home.run(shard.stats())["rows"] > 0, 60, "the robot's data to be stored on the shard")
        r = cli("robots", "revoke", "arm-a-1", "--config", str(config))
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "code=revoked" in robot.log.read_text(), 15, "the shard to close the revoked robot's link")
        assert "arm-a-1" not in shard._runner.app[ROBOTS]
    finally:
        if robot is not None:
            robot.kill()
        home.run(shard.close())
        home.stop()
