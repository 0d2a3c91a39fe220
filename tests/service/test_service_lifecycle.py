"""Daemon lifecycle with real processes: SIGTERM drains and a restart loses
nothing (the exact ledger count), SIGHUP reloads only what is safe,
`edge-agent status`, both Prometheus endpoints (the learner's learning metrics
parsed with prometheus_client's parser), and `edge-agent check`
against a good and a broken setup."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from harness import Agent, Learner, assert_exactly_once, free_port, wait_for

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


SERVICE = {"metrics_port": 0, "status_interval_s": 0.5}  # metrics on a free port: tests run side by side


class ServiceLearner(Learner):
    def __init__(self, root: Path, **kw):
        super().__init__(root, **kw)
        data = tomllib.loads(self.cfg.read_text())
        data["metrics"] = {"port": 0}
        self.cfg.write_text(tomli_w.dumps(data))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=120)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _acked(agent: Agent, at_least: int) -> bool:
    return agent.status().get("spool", {}).get("acked_seq", 0) >= at_least


def test_sigterm_drains_restart_resumes_sighup_reloads_nothing_lost(tmp_path: Path) -> None:
    learner = ServiceLearner(tmp_path).start()
    agent = Agent(tmp_path, "svc", [learner.url], episodes=0, rate_hz=100, chunk_steps=10, service=SERVICE)
    agent.start(drain_timeout=20)
    wait_for(lambda: _acked(agent, 3), 90, "chunks acked")
    agent.proc.send_signal(signal.SIGTERM)  # mid-episode, mid-upload: episodes=0 runs forever
    assert agent.wait(30) == 0, agent.log.read_text()[-3000:]
    log = agent.log.read_text()
    assert "event=drained" in log and "Traceback" not in log
    first = assert_exactly_once(learner.data_dir, [agent])["svc"]
    r = _cli("status", "--config", str(agent.cfg))
    assert r.returncode == 3 and "offline" in r.stdout and "state was stopped" in r.stdout

    agent.start(drain_timeout=20)  # restart on the same spool and ledger
    wait_for(lambda: agent.status().get("state") == "running" and agent.status()["link"]["connected"], 60, "running")
    target = agent.ledger()["last_seq"] + 2
    wait_for(lambda: _acked(agent, target), 60, "new chunks acked after restart")
    r = _cli("status", "--config", str(agent.cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("agent") and "online" in r.stdout and "link      up" in r.stdout
    metrics = _get(agent.status()["metrics_url"])
    assert "fleetrl_agent_link_up 1.0" in metrics and "fleetrl_agent_control_jitter_seconds{quantile=\"0.99\"}" in metrics
    endpoint = json.loads((learner.data_dir / "endpoint.json").read_text())
    lm = _get(endpoint["metrics"])
    assert "fleetrl_learner_robots_linked 1.0" in lm and "fleetrl_learner_ingest_rows_total" in lm
    # Learning metrics, parsed as Prometheus parses them, once the learner trains (learning_starts rows in)
    # and some episode has ended.
    def learning() -> str | None:
        text = _get(endpoint["metrics"])
        return text if 'fleetrl_learner_loss{name="critic_loss"}' in text and "fleetrl_learner_success_rate " in text else None

    lm = wait_for(learning, 90, "learning metrics")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(lm) for s in fam.samples}
    losses = {dict(k[1])["name"]: v for k, v in samples.items() if k[0] == "fleetrl_learner_loss"}
    assert {"critic_loss", "actor_loss", "alpha_loss", "alpha"} <= set(losses), losses
    assert 0.0 <= samples[("fleetrl_learner_success_rate", ())] <= 1.0
    assert samples[("fleetrl_learner_robot_rows", (("robot_id", "svc"),))] >= Learner.DEFAULTS["learning_starts"]
    assert samples[("fleetrl_learner_device_info", (("device", "cpu"),))] == 1.0
    assert samples[("fleetrl_learner_updates_total", ())] > 0 and samples[("fleetrl_learner_robots_linked", ())] == 1.0

    cfg = tomllib.loads(agent.cfg.read_text())  # SIGHUP: one safe change, two that need a restart
    cfg["service"]["log_level"] = "DEBUG"
    cfg["robot_id"] = "renamed"
    cfg["control"]["rate_hz"] = 5
    agent.cfg.write_text(tomli_w.dumps(cfg))
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in agent.log.read_text(), 20, "reload")
    log = agent.log.read_text()
    assert "event=reloaded applied=service.log_level refused=control.rate_hz,robot_id" in log
    assert "event=reload_refused key=robot_id reason=restart_required" in log
    wait_for(lambda: "level=DEBUG" in agent.log.read_text(), 20, "debug logging after reload")
    assert agent.status()["robot_id"] == "svc" and agent.status()["control"]["target_hz"] == 100

    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.log.read_text()[-3000:]
    second = assert_exactly_once(learner.data_dir, [agent])["svc"]
    assert second["generated"] > first["generated"] and second["duplicates"] == 0
    learner.stop()


def _agent_toml(path: Path, url: str, **over) -> Path:
    data = {"robot_id": "check-1", "link": {"url": url, "connect_timeout_s": 3},
            "robot": {"driver": "mujoco_fetch", "options": {"seed": 1}},
            "spool": {"dir": str(path.parent / "spool")}, "state_dir": str(path.parent / "state")}
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) else v
    path.write_text(tomli_w.dumps(data))
    return path


def _table(out: str) -> dict[str, str]:
    """CHECK column -> RESULT column, by the header's column positions."""
    header, *lines = out.splitlines()
    at, dt = header.index("RESULT"), header.index("DETAIL")
    return {ln[:at].strip(): ln[at:dt].strip() for ln in lines}


def test_check_passes_on_a_good_setup_and_names_every_fault_of_a_broken_one(tmp_path: Path) -> None:
    learner = ServiceLearner(tmp_path).start()
    (tmp_path / "good").mkdir()
    good = _agent_toml(tmp_path / "good" / "agent.toml", learner.url)
    r = _cli("check", "--config", str(good))
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    t = _table(r.stdout)
    assert t == {"config": "ok", "robot arm": "ok", "spool dir": "ok", "state dir": "ok", "link": "ok", "credential": "-"}
    assert "welcome in" in r.stdout and "not configured" in r.stdout

    (tmp_path / "bad").mkdir()
    blocker = tmp_path / "bad" / "a-file"
    blocker.write_text("not a directory")
    bad = _agent_toml(tmp_path / "bad" / "agent.toml", f"ws://127.0.0.1:{free_port()}/ws",
                      robot={"options": {"seed": 1, "no_such_option": 3}}, spool={"dir": str(blocker / "spool")})
    r = _cli("check", "--config", str(bad))
    print(r.stdout)
    assert r.returncode == 1
    t = _table(r.stdout)
    assert t["config"] == "ok" and t["robot arm"] == "FAIL" and t["spool dir"] == "FAIL" and t["link"] == "FAIL"
    assert t["state dir"] == "ok" and "no_such_option" in r.stdout and "Traceback" not in r.stdout + r.stderr

    broken = tmp_path / "bad" / "broken.toml"
    broken.write_text('robot_id = "x"\n[control]\nrate_hz = -1\n')
    r = _cli("check", "--config", str(broken))
    assert r.returncode == 1 and _table(r.stdout)["config"] == "FAIL" and "control.rate_hz" in r.stdout
    learner.stop()
