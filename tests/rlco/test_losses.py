"""Stage I's alpha weighting and Stage II's beta term are exact; mixed batches keep their ratio."""

import math

import numpy as np
import pytest
import torch

from cloud.rlco.losses import Demos, cotrain_sft, mix_counts, mixed_batch, sft_loss, stage2_loss
from shared.policy.mlp import Actor


def _fixed_actor(mean: float, log_std: float) -> Actor:
    """An actor whose output ignores its input: mean and log_std are the head's bias."""
    actor = Actor(obs_dim=2, act_dim=1, hidden=[4])
    with torch.no_grad():
        for p in actor.parameters():
            p.zero_()
        actor.head.bias.copy_(torch.tensor([mean, log_std]))
    return actor


def _nll(u: float, mean: float, log_std: float) -> float:
    """By hand: bc_loss's per-row NLL (the constant 0.5 log 2 pi and the tanh Jacobian left out)."""
    return 0.5 * ((u - mean) / math.exp(log_std)) ** 2 + log_std


def _batch(actions: list[float]) -> dict[str, torch.Tensor]:
    return {"obs": torch.zeros(len(actions), 2), "action": torch.tensor(actions).reshape(-1, 1)}


def test_sft_loss_is_the_hand_computed_nll():
    actor = _fixed_actor(0.2, -0.5)
    actions = [0.0, math.tanh(1.0), -0.5]
    want = np.mean([_nll(math.atanh(a), 0.2, -0.5) for a in actions])
    assert sft_loss(actor, _batch(actions)).item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_cotrain_weighting_is_exact(alpha):
    actor = _fixed_actor(0.0, 0.0)
    sim, real = _batch([math.tanh(1.0)] * 8), _batch([math.tanh(3.0), 0.0])  # different sizes on purpose
    l_sim = _nll(1.0, 0, 0)  # 0.5
    l_real = np.mean([_nll(3.0, 0, 0), _nll(0.0, 0, 0)])  # 2.25
    total, parts = cotrain_sft(actor, alpha, sim, real)
    assert total.item() == pytest.approx(alpha * l_sim + (1 - alpha) * l_real, rel=1e-5)
    if 0 < alpha < 1:
        assert parts == pytest.approx({"sft_sim": l_sim, "sft_real": l_real}, rel=1e-5)


def test_alpha_edges_need_only_their_dataset():
    actor = _fixed_actor(0.0, 0.0)
    total, parts = cotrain_sft(actor, 1.0, _batch([0.0]), None)
    assert set(parts) == {"sft_sim"} and total.item() == pytest.approx(0.0, abs=1e-6)
    total, parts = cotrain_sft(actor, 0.0, None, _batch([math.tanh(2.0)]))
    assert set(parts) == {"sft_real"} and total.item() == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(ValueError, match="no real batch"):
        cotrain_sft(actor, 0.5, _batch([0.0]), None)
    with pytest.raises(ValueError, match="alpha"):
        cotrain_sft(actor, 1.5, _batch([0.0]), _batch([0.0]))


def test_cotrain_gradient_is_the_weighted_sum_of_gradients():
    torch.manual_seed(0)
    actor = Actor(2, 1, [8])
    sim = {"obs": torch.randn(16, 2), "action": torch.rand(16, 1) * 1.8 - 0.9}
    real = {"obs": torch.randn(4, 2), "action": torch.rand(4, 1) * 1.8 - 0.9}

    def grad(loss):
        actor.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in actor.parameters()])

    g = grad(cotrain_sft(actor, 0.3, sim, real)[0])
    want = 0.3 * grad(sft_loss(actor, sim)) + 0.7 * grad(sft_loss(actor, real))
    assert torch.allclose(g, want, atol=1e-6)


def test_stage2_loss_adds_beta_times_real_sft():
    rl, sft = torch.tensor(1.5), torch.tensor(4.0)
    assert stage2_loss(rl, 0.25, sft).item() == pytest.approx(2.5)
    assert stage2_loss(rl, 0.0, None) is rl
    with pytest.raises(ValueError, match="needs the SFT loss"):
        stage2_loss(rl, 0.1, None)
    with pytest.raises(ValueError, match="beta"):
        stage2_loss(rl, -1.0, sft)


@pytest.mark.parametrize("ratio,n", [(0.5, 256), (0.75, 100), (0.0, 10), (1.0, 10), (0.3, 7)])
def test_mixed_batches_keep_the_configured_ratio(ratio, n):
    sim = Demos(np.zeros((50, 2), np.float32), np.full((50, 1), 0.5, np.float32))
    real = Demos(np.ones((5, 2), np.float32), np.full((5, 1), -0.5, np.float32))
    rng = np.random.default_rng(0)
    b = mixed_batch(sim, real, n, ratio, rng)
    k_sim, k_real = mix_counts(n, ratio)
    assert k_sim + k_real == n and k_sim == round(ratio * n)
    assert len(b["obs"]) == n and int(b["from_sim"].sum()) == k_sim
    # each row really comes from the dataset it is marked with
    assert torch.all(b["action"][b["from_sim"]] == 0.5) and torch.all(b["action"][~b["from_sim"]] == -0.5)


def test_demos_refuse_mismatched_lengths():
    with pytest.raises(ValueError, match="one length"):
        Demos(np.zeros((3, 2), np.float32), np.zeros((2, 1), np.float32))


def test_sft_trainer_batch_weighting_draws_the_configured_ratio(monkeypatch):
    from cloud.learner.normalize import ObsNormalizer
    from cloud.rlco import sft as sft_mod
    from cloud.rlco.sft import SFTTrainer
    from cloud.rlco.config import SFTConfig

    seen = []
    real_mixed = sft_mod.mixed_batch

    def spy(sim, real, n, ratio, rng):
        b = real_mixed(sim, real, n, ratio, rng)
        seen.append((n, int(b["from_sim"].sum())))
        return b

    monkeypatch.setattr(sft_mod, "mixed_batch", spy)
    sim = Demos(np.zeros((50, 2), np.float32), np.full((50, 1), 0.5, np.float32))
    real = Demos(np.ones((5, 2), np.float32), np.full((5, 1), -0.5, np.float32))
    t = SFTTrainer(2, 1, SFTConfig(weighting="batch", batch_size=50, hidden=[8]),
                   ObsNormalizer(torch.zeros(2), torch.ones(2)))
    out = t.step(0.8, sim, real)
    assert seen == [(100, 80)] and np.isfinite(out["loss"]) and t.updates == 1
