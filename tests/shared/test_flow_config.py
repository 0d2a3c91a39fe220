"""learner.policy = "flow": which algorithms may train it, and the fields that size its chunks."""

from __future__ import annotations

import pytest

from shared.config import LearnerAlgoConfig, LearnerConfig, validate
from shared.errors import ConfigError


def _learner(**over: object) -> LearnerAlgoConfig:
    return validate(LearnerConfig, {"learner": over}).learner


def test_flow_with_bc_and_hg_dagger_is_accepted() -> None:
    cfg = _learner(policy="flow", algorithm="bc", flow_horizon=8, flow_steps=5)
    assert (cfg.policy_kind, cfg.flow_horizon, cfg.flow_steps) == ("flow", 8, 5)
    assert _learner(policy="flow", algorithm="hg_dagger").policy_kind == "flow"
    defaults = _learner()
    assert (defaults.policy_kind, defaults.flow_horizon, defaults.flow_steps) == ("mlp_gaussian", 10, 10)


@pytest.mark.parametrize("algorithm", ["sac", "rlpd"])
def test_flow_with_rl_is_refused_naming_the_fields(algorithm: str) -> None:
    with pytest.raises(ConfigError) as e:
        _learner(policy="flow", algorithm=algorithm)
    msg = str(e.value)
    assert 'policy = "flow"' in msg and f'algorithm = "{algorithm}"' in msg and '"bc"' in msg


@pytest.mark.parametrize(("over", "match"), [
    ({"image_fields": ["camera"]}, 'policy = "flow" reads state only'),
    ({"bc_pretrain_updates": 100}, "bc_pretrain_updates = 0"),
    ({"flow_horizon": 0}, "learner.flow_horizon"),
    ({"flow_horizon": 257}, "learner.flow_horizon"),
    ({"flow_steps": 101}, "learner.flow_steps"),
])
def test_other_flow_misconfigurations_are_refused(over: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _learner(policy="flow", algorithm="bc", **over)
