"""Keeping a behaviour-cloning warm start in SAC/RLPD: the BC term on the rows people drove
(``learner.bc_weight``, ``bc_decay_updates``) and the critic warm-up (``critic_warmup_updates``)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.buffer.demos import MixedSource
from cloud.learner import checkpoint
from cloud.learner.bc_term import bc_regulariser, human_mask
from cloud.learner.sac import SAC, SACConfig
from cloud.learner.trainer import Trainer
from shared.config import LearnerConfig, validate
from shared.errors import ConfigError
from tests.cloud.test_hil_learner import _buffer, _write, expert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OBS, ACT, B = 6, 4, 64


def batch(seed: int, human: int = B // 2, flag: str = "demo") -> dict[str, torch.Tensor]:
    """Rows in the layout of an RLPD batch: the first ``B - human`` online (random actions), the last
    ``human`` flagged ``flag`` with the expert's action."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(B, OBS)).astype(np.float32)
    action = rng.uniform(-1, 1, (B, ACT)).astype(np.float32)
    action[B - human:] = expert(obs[B - human:])
    flags = {"demo": np.zeros(B, np.float32), "intervention": np.zeros(B, np.float32)}
    flags[flag][B - human:] = 1.0
    out = {"obs": obs, "action": action, "reward": rng.normal(size=B).astype(np.float32),
           "next_obs": rng.normal(size=(B, OBS)).astype(np.float32), "terminated": np.zeros(B, np.float32), **flags}
    return {k: torch.from_numpy(v) for k, v in out.items()}


def sac(**over: object) -> SAC:
    return SAC(OBS, ACT, SACConfig(hidden=(32, 32), critic_layer_norm=True, **over), seed=3)  # type: ignore[arg-type]


def demo_error(agent: SAC, b: dict[str, torch.Tensor]) -> float:
    """Squared distance of the policy's mean action from the expert's on the batch's demo rows."""
    rows = b["demo"] > 0
    with torch.no_grad():
        return (agent.actor.act(b["obs"][rows], deterministic=True) - b["action"][rows]).pow(2).sum(-1).mean().item()


def same_actor(a: SAC, b: SAC) -> bool:
    sa, sb = a.actor_state(), b.actor_state()
    return all(torch.equal(v, sb[k]) for k, v in sa.items())


# ------------------------------------------------------------------ the term


def test_the_term_averages_over_the_human_rows_only() -> None:
    agent = sac()
    b = batch(0, human=16, flag="intervention")
    mask = human_mask(b, agent.device)
    assert mask.tolist() == [0.0] * (B - 16) + [1.0] * 16  # interventions count as human rows too
    with torch.no_grad():
        mean, _ = agent.actor(b["obs"])
        by_hand = (torch.tanh(mean[-16:]) - b["action"][-16:]).pow(2).sum(-1).mean()
        assert torch.allclose(bc_regulariser(agent.actor, b["obs"], b["action"], mask), by_hand)
        assert bc_regulariser(agent.actor, b["obs"], b["action"], torch.zeros(B)).item() == 0.0
    with pytest.raises(ValueError, match="demo/intervention"):
        human_mask({k: v for k, v in b.items() if k not in ("demo", "intervention")}, agent.device)


def test_the_term_pulls_the_policy_mean_toward_the_demonstrated_actions() -> None:
    plain, cloned = sac(), sac(bc_weight=10.0)
    held_out = batch(999)
    before = demo_error(plain, held_out)
    for i in range(150):
        b = batch(i)
        plain.update(b)
        stats = cloned.update(b)
    assert stats["bc_weight"] == 10.0 and stats["bc_loss"] >= 0
    assert "bc_loss" not in plain.update(batch(150))
    after_plain, after_cloned = demo_error(plain, held_out), demo_error(cloned, held_out)
    assert after_cloned < 0.5 * before and after_cloned < 0.5 * after_plain, (before, after_plain, after_cloned)


def test_off_the_update_ignores_the_human_flags_and_a_decayed_term_is_exactly_off() -> None:
    """bc_weight = 0 reads no flag (the same update with and without them), and once bc_decay_updates have
    passed the update is bit-identical to one with bc_weight = 0 from the same state."""
    a, b = sac(), sac()
    for i in range(3):
        x = batch(i)
        no_flags = {k: v for k, v in x.items() if k not in ("demo", "intervention")}
        assert a.update(x) == b.update(no_flags)
    assert same_actor(a, b)

    decaying = sac(bc_weight=5.0, bc_decay_updates=4)
    weights = [decaying.update(batch(i)).get("bc_weight", 0.0) for i in range(6)]
    assert weights == [5.0, 3.75, 2.5, 1.25, 0.0, 0.0]
    off = sac()
    off.load_state_dict(copy.deepcopy(decaying.state_dict()))  # a copy: Adam would share its moments
    assert [decaying.update(batch(10 + i)) for i in range(3)] == [off.update(batch(10 + i)) for i in range(3)]
    assert same_actor(decaying, off)


# ------------------------------------------------------------------ the critic warm-up


def test_critic_warmup_trains_the_critics_alone_then_the_actor_and_the_decay_starts_after_it() -> None:
    agent = sac(critic_warmup_updates=5, bc_weight=2.0, bc_decay_updates=10)
    actor0 = agent.actor_state()
    critic0 = [p.detach().clone() for p in agent.critic.parameters()]
    alpha0 = agent.alpha
    for i in range(5):
        stats = agent.update(batch(i))
        assert stats["critic_warmup"] == 1.0 and "bc_loss" not in stats and stats["actor_loss"] == 0.0
    assert all(torch.equal(v, actor0[k]) for k, v in agent.actor_state().items())  # the warm start is kept
    assert agent.alpha == alpha0
    assert any(not torch.equal(p, p0) for p, p0 in zip(agent.critic.parameters(), critic0))
    stats = agent.update(batch(5))
    assert "critic_warmup" not in stats and stats["bc_weight"] == 2.0  # the decay counts actor updates only
    assert any(not torch.equal(v, actor0[k]) for k, v in agent.actor_state().items())


def test_resume_in_the_warmup_and_the_decay_gives_the_identical_next_updates(tmp_path: Path) -> None:
    def make(seed: int) -> SAC:
        return SAC(OBS, ACT, SACConfig(hidden=(32, 32), critic_warmup_updates=3, bc_weight=1.0,
                                       bc_decay_updates=4), seed=seed)

    agent = make(1)
    for i in range(2):
        agent.update(batch(i))
    checkpoint.save(tmp_path / "ckpt.safetensors", {"sac": agent.state_dict()})
    expected = [agent.update(batch(10 + i)) for i in range(5)]  # through the warm-up's end and the decay
    restored = make(9)
    restored.load_state_dict(checkpoint.load(tmp_path / "ckpt.safetensors")["sac"])
    assert [restored.update(batch(10 + i)) for i in range(5)] == expected
    assert same_actor(agent, restored)


# ------------------------------------------------------------------ real batches, the config, the trainer


def test_real_rlpd_batches_flag_exactly_their_demo_half(tmp_path: Path) -> None:
    buf = _buffer(tmp_path / "buffer")
    _write(buf, _write(buf, 1, 4, demo=True), 4)
    rows = MixedSource(buf, 0.5).sample(64, np.random.default_rng(0))
    b = {k: torch.from_numpy(v) for k, v in rows.items()}
    mask = human_mask(b, torch.device("cpu"))
    assert mask.sum().item() == 32
    assert torch.allclose(b["action"][mask > 0], torch.from_numpy(expert(rows["obs"][mask.numpy() > 0])), atol=1e-5)


def _learner(**over: object):
    return validate(LearnerConfig, {"learner": over}).learner


def test_the_config_keys_reach_the_learner_and_default_off(tmp_path: Path) -> None:
    assert (_learner().bc_weight, _learner().bc_decay_updates, _learner().critic_warmup_updates) == (0.0, 0, 0)
    cfg = _learner(algorithm="rlpd", bc_weight=2.5, bc_decay_updates=1000, critic_warmup_updates=500)
    buf = _buffer(tmp_path / "buffer")
    _write(buf, 1, 1)
    sc = Trainer(buf, cfg, lambda blob: None)._sac_config(buf.dims)
    assert (sc.bc_weight, sc.bc_decay_updates, sc.critic_warmup_updates) == (2.5, 1000, 500)


@pytest.mark.parametrize(("over", "match"), [
    ({"bc_weight": -1.0}, "learner.bc_weight"),
    ({"critic_warmup_updates": -5}, "learner.critic_warmup_updates"),
    ({"bc_weight": 1.0, "bc_decay_updates": -1}, "learner.bc_decay_updates"),
    ({"bc_decay_updates": 100}, "bc_decay_updates = 100 decays bc_weight, which is 0"),
    ({"algorithm": "bc", "bc_weight": 1.0}, 'algorithm = "bc" is behaviour cloning already: set bc_weight = 0'),
    ({"algorithm": "hg_dagger", "critic_warmup_updates": 10}, "set critic_warmup_updates = 0"),
    ({"algorithm": "rlpd", "bc_weight": 1.0, "image_fields": ["cam"]}, "bc_weight = 1.0: .* state policies"),
])
def test_misconfigurations_are_refused_naming_the_key(over: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _learner(**over)
