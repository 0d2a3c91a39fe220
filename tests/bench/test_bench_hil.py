"""bench hil's pieces that need no learning run: the configs it writes, and how it reads success and
interventions from stored episodes (the whole pipeline runs in test_bench_smoke's quick variant)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import hil
from hal_drivers import registry
from shared.config import AgentConfig, LearnerConfig


@pytest.mark.parametrize("v", hil.variants(), ids=lambda v: v.name)
def test_every_variant_writes_configs_the_real_models_accept(v, tmp_path):
    learner = hil.learner_table(v, tmp_path / "demos")
    cfg = LearnerConfig.model_validate({"data_dir": str(tmp_path / "run"), "learner": learner})
    assert cfg.learner.algorithm == v.name.split("+")[0]
    if v.demos:
        assert cfg.learner.demo_paths == [tmp_path / "demos"]
    if cfg.learner.algorithm == "rlpd":
        assert cfg.learner.critic_layer_norm and cfg.learner.critic_subset == 2 <= cfg.learner.critics
        assert cfg.learner.bc_pretrain_updates > 0 and cfg.learner.normalize_observations
        assert cfg.learner.bc_weight > 0  # the warm start is kept by a BC term on the demo half
    teleop = hil.CORRECT_OPERATOR if v.operator else None
    agent = AgentConfig.model_validate(hil.agent_table("sim-0", "ws://127.0.0.1:1/ws", tmp_path, seed=1, rate_hz=25,
                                                       teleop=teleop))
    assert agent.robot.options["task"] == "push"
    assert (agent.teleop is not None) == v.operator
    if agent.teleop is not None:
        op = registry.create(agent.teleop.device, agent.teleop.options, section="teleop")
        assert op.config.mode == "correct"  # type: ignore[attr-defined]
    ev = AgentConfig.model_validate(hil.agent_table(hil.EVAL, "ws://127.0.0.1:1/ws", tmp_path, seed=1, rate_hz=25,
                                                    teleop=None, deterministic=True))
    assert ev.control.deterministic and ev.teleop is None  # the evaluation robot: the policy alone


def test_demo_operator_options_are_valid():
    op = registry.create("scripted_fetch", hil.DEMO_OPERATOR, section="teleop")
    assert op.config.mode == "always"  # type: ignore[attr-defined]


def test_a_demo_variant_without_demos_is_refused():
    with pytest.raises(ValueError, match="demonstrations"):
        hil.learner_table(hil.variants(("rlpd",))[0], None)
    with pytest.raises(ValueError, match="unknown variant"):
        hil.variants(("ppo",))


def ep(t_s: float, success: bool, driven: int = 0) -> hil.Episode:
    return hil.Episode("sim-0", int(t_s * 1e9), 50, success, driven, False)


def test_curve_time_to_target_and_intervention_windows():
    eps = [ep(i, False, 40) for i in range(1, 11)] + [ep(10 + i, True, 0) for i in range(1, 11)]
    c = hil.curve(eps, 0, window=10)
    assert c["episodes"] == list(range(1, 21))
    assert c["success_rate"][9] == 0.0 and c["success_rate"][-1] == 1.0
    # 8 of the last 10 succeeded first at the 18th episode (t = 18 s)
    assert hil.time_to(c, 0.8, window=10) == 18.0
    assert hil.time_to(c, 0.8, window=50) is None  # never a full window of 50
    assert hil.windowed_rate(eps, 10) == 1.0 and hil.windowed_rate([], 10) is None
    wins = hil.intervention_windows(eps, 0, 10.0)
    assert [w["rate"] for w in wins] == [pytest.approx(40 * 9 / 450), pytest.approx(40 / 500), 0.0]


def test_episodes_are_read_from_a_learner_data_dir_without_one(tmp_path: Path):
    assert hil.read_episodes(tmp_path) == []
