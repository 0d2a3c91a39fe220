"""The [policy] table (where the policy runs, how chunks are executed) and the learner's [inference]
table: check-config accepts good ones and names the key of a bad one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pydantic import ValidationError
from typer.testing import CliRunner

from edge_agent.cli import app
from harness import free_port
from shared.config import LearnerConfig


def _config(tmp_path: Path, policy: dict[str, Any]) -> Path:
    cfg: dict[str, Any] = {
        "robot_id": "pm-9",
        "link": {"url": f"ws://127.0.0.1:{free_port()}/ws", "allow_unauthenticated": True},
        "robot": {"driver": "point_mass", "options": {"dims": 2}},
        "spool": {"dir": str(tmp_path / "spool")},
        "state_dir": str(tmp_path / "state"),
        "policy": policy,
    }
    p = tmp_path / "agent.toml"
    p.write_text(tomli_w.dumps(cfg))
    return p


def _check(tmp_path: Path, policy: dict[str, Any]):
    return CliRunner().invoke(app, ["check-config", str(_config(tmp_path, policy))])


def test_check_config_accepts_a_cloud_policy(tmp_path: Path) -> None:
    res = _check(tmp_path, {"where": "cloud", "horizon": 10, "overlap": 2, "blend_steps": 2, "on_late": "zero",
                            "request_timeout_ms": 200, "max_inflight": 4})
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("policy,key", [
    ({"where": "gpu"}, "policy.where"),
    ({"on_late": "panic"}, "policy.on_late"),
    ({"horizon": 0}, "policy.horizon"),
    ({"horizon": 4, "overlap": 4}, "overlap (4) must be smaller than horizon (4)"),
    ({"horizon": 4, "blend_steps": 5}, "blend_steps (5) must be smaller than horizon (4)"),
    ({"request_timeout_ms": 0}, "policy.request_timeout_ms"),
    ({"max_inflight": 0}, "policy.max_inflight"),
    ({"max_inflight": 65}, "policy.max_inflight"),
    ({"horizn": 10}, "policy.horizn"),
])
def test_check_config_refuses_a_bad_policy_table_naming_the_key(tmp_path: Path, policy, key) -> None:
    res = _check(tmp_path, policy)
    assert res.exit_code == 2 and key in res.output, res.output


def test_the_learners_inference_table_is_checked() -> None:
    cfg = LearnerConfig.model_validate({"inference": {"enabled": True, "max_batch": 16, "latency_budget_ms": 50}})
    assert cfg.inference.enabled and cfg.inference.max_batch == 16
    for bad in ({"max_batch": 0}, {"batch_window_ms": 60, "latency_budget_ms": 50}, {"max_in_flight": 0},
                {"max_requests_per_s": 0}, {"wat": 1}):
        with pytest.raises(ValidationError):
            LearnerConfig.model_validate({"inference": bad})
