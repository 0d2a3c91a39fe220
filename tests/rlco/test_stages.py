"""The stage machine survives SIGKILL between and within stages: --resume continues, repeats nothing.

Real subprocesses (``cloud-learner rlco``) killed with a real SIGKILL at exact places
(``FLEETRL_CRASH_AT``, shared/faults.py): after an in-stage checkpoint, and right after a
stage was marked done.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from cloud.learner import checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "datasets": {"sim_episodes": 3, "real_episodes": 3, "real_via": "in_process", "success_only": False},
    "sft": {"updates": 300, "checkpoint_every": 100, "hidden": [32, 32], "batch_size": 64},
    "rl": {"envs": 2, "iterations": 3, "steps": 10, "minibatch": 10, "epochs": 1, "checkpoint_every": 1},
    "eval": {"episodes": 2, "robots": 1, "via": "in_process"},
}


FLOW = {"sft": {**TINY["sft"], "policy": "flow", "flow_horizon": 4}, "eval": {**TINY["eval"], "after": ["sft"]}}
CNN_FLOW = {"sft": {**FLOW["sft"], "policy": "cnn_flow", "cnn_channels": [4, 4], "cnn_latent": 8},
            "eval": FLOW["eval"], "cameras": [{"name": "overhead", "view": "external_camera_0", "size": 16}]}


def _config(tmp_path: Path, run: str, policy: str = "gaussian") -> Path:
    cfg = tmp_path / f"{run}.toml"
    d = {"run_dir": run, **TINY, "datasets": {**TINY["datasets"], "dir": "datasets"}}
    cfg.write_text(tomli_w.dumps({**d, **{"flow": FLOW, "cnn_flow": CNN_FLOW}.get(policy, {})}))
    return cfg


def _rlco(cfg: Path, *args: str, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FLEETRL_CRASH_AT"}
    env["PYTHONPATH"] = str(ROOT)
    if crash:
        env["FLEETRL_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "cloud", "rlco", "--config", str(cfg), *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_kill_between_stages_and_within_a_stage_then_resume(tmp_path):
    cfg = _config(tmp_path, "run")
    run = tmp_path / "run"
    # 1. killed right after Stage I is marked done (between stages)
    p = _rlco(cfg, crash="rlco_stage_done:1")
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert json.loads((run / "state.json").read_text())["done"] == ["sft"]
    dataset_files = {f: f.stat().st_mtime_ns for f in (tmp_path / "datasets").rglob("*.parquet")}
    assert len(dataset_files) == 2
    # 2. resumed, killed within Stage II after its first checkpoint
    p = _rlco(cfg, "--resume", crash="rlco_rl_checkpoint:1")
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert (run / "ckpt" / "rl.ckpt").exists()
    # 3. a plain restart refuses to start over a run; --resume finishes it
    p = _rlco(cfg)
    assert p.returncode == 2 and "already holds a run" in p.stderr and "--resume" in p.stderr
    p = _rlco(cfg, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Stage II" in p.stdout and "real success" in p.stdout

    ev = _events(run)
    starts = [(e["stage"], e.get("start")) for e in ev if e["event"] == "stage_start"]
    assert starts == [("sft", 0), ("rl", 0), ("rl", 1), ("eval_sft", None), ("eval_rl", None)]
    assert [e["made"] for e in ev if e["event"] == "dataset"] == [True, True, False, False, False, False]
    assert {f: f.stat().st_mtime_ns for f in dataset_files} == dataset_files  # not regenerated
    state = json.loads((run / "state.json").read_text())
    assert state["done"] == ["sft", "rl", "eval_sft", "eval_rl"]
    assert not list((run / "ckpt").iterdir())  # finished stages leave no in-stage checkpoint
    summary = json.loads((run / "summary.json").read_text())
    assert [s["episodes"] for s in summary["stages"]] == [2, 2]


@pytest.mark.parametrize("policy", ["gaussian", "flow", "cnn_flow"])
def test_kill_within_stage_one_resumes_to_the_same_policy(tmp_path, policy):
    whole, killed = _config(tmp_path, "whole", policy), _config(tmp_path, "killed", policy)
    p = _rlco(killed, "--stage", "sft", crash="rlco_sft_checkpoint:2")
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert checkpoint.load(tmp_path / "killed" / "ckpt" / "sft.ckpt")["updates"] == 200
    p = _rlco(killed, "--stage", "sft")
    assert p.returncode == 2 and "interrupted" in p.stderr
    assert _rlco(killed, "--stage", "sft", "--resume").returncode == 0
    assert _rlco(whole, "--stage", "sft").returncode == 0
    starts = [e.get("start") for e in _events(tmp_path / "killed") if e["event"] == "stage_start"]
    assert starts == [0, 200]
    a = checkpoint.load(tmp_path / "whole" / "stages" / "sft" / "actor.ckpt")["actor"]
    b = checkpoint.load(tmp_path / "killed" / "stages" / "sft" / "actor.ckpt")["actor"]
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # Stage I replays exactly
    arch = checkpoint.load(tmp_path / "killed" / "stages" / "sft" / "actor.ckpt")["arch"]
    assert arch["kind"] == ("mlp_gaussian" if policy == "gaussian" else policy)
    if policy != "gaussian":  # Stage II trains the Gaussian only: refused, naming the field, nothing written
        p = _rlco(killed, "--stage", "rl", "--resume")
        assert p.returncode == 2 and f'sft.policy = "{policy}": Stage II' in p.stderr
        assert "rl" not in json.loads((tmp_path / "killed" / "state.json").read_text())["done"]
        return
    # Stage II needs Stage I's output: a clear error on a run without it
    p = _rlco(_config(tmp_path, "fresh"), "--stage", "rl")
    assert p.returncode == 2 and "stage sft has not finished" in p.stderr


def test_resume_without_a_run_and_a_changed_config_are_refused(tmp_path):
    cfg = _config(tmp_path, "run")
    p = _rlco(cfg, "--resume")
    assert p.returncode == 2 and "holds no run" in p.stderr and not (tmp_path / "run").exists()
    assert _rlco(cfg, "--stage", "sft").returncode == 0
    text = cfg.read_text().replace("updates = 300", "updates = 400")
    cfg.write_text(text)
    p = _rlco(cfg, "--resume")
    assert p.returncode == 2 and "sft.updates: 300 there, 400 here" in p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[sft]\nalpha = 2.0\n")
    p = _rlco(bad)
    assert p.returncode == 2 and "sft.alpha" in p.stderr


@pytest.fixture(autouse=True)
def _no_crash_env(monkeypatch):
    monkeypatch.delenv("FLEETRL_CRASH_AT", raising=False)


def test_stage_two_with_sac_runs_in_process(tmp_path):
    from cloud.rlco.stages import Recipe
    from cloud.rlco.config import RLCoConfig

    cfg = RLCoConfig.model_validate({
        "run_dir": str(tmp_path / "run"), **TINY, "datasets": {**TINY["datasets"], "dir": str(tmp_path / "datasets")},
        "rl": {"algorithm": "sac", "envs": 2, "iterations": 2, "steps": 10, "minibatch": 16, "checkpoint_every": 1,
               "sac_updates_per_step": 0.5, "critic_warmup": 1}})  # iteration 1 warms the critics, 2 trains the actor
    seen = []
    summary = Recipe(cfg, lambda what, done, total, m: seen.append(what)).run()
    assert summary["done"] == ["sft", "rl", "eval_sft", "eval_rl"]
    assert "Stage II: RL (SAC)" in seen and "sft_real" in summary["stages"][1]["train"]
