"""Stage II's SAC keeps Stage I's actor while its fresh critics warm up, then trains it with beta * SFT."""

import torch

from cloud.learner.sac import SAC, SACConfig
from cloud.rlco.sac_rl import sac_update


def _batch(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    obs = torch.randn(n, 3, generator=gen)
    return {"obs": obs, "action": torch.rand(n, 2, generator=gen) * 2 - 1, "reward": torch.randn(n, generator=gen),
            "next_obs": obs + 0.1, "terminated": torch.zeros(n)}


def _actor_params(sac: SAC) -> list[torch.Tensor]:
    return [p.detach().clone() for p in sac.actor.parameters()]


def test_warm_up_updates_only_the_critics_then_the_actor_learns_with_the_real_sft_term():
    gen = torch.Generator().manual_seed(0)
    sac = SAC(3, 2, SACConfig(hidden=(16, 16), critic_warmup_updates=5), seed=0)
    real = {"obs": torch.randn(8, 3, generator=gen), "action": torch.rand(8, 2, generator=gen) * 1.8 - 0.9}
    actor0, alpha0 = _actor_params(sac), sac.log_alpha.detach().clone()
    critic0 = [p.detach().clone() for p in sac.critic.parameters()]
    for _ in range(5):
        out = sac_update(sac, _batch(32, gen), beta=0.5, real=real)
        assert out["critic_warmup"] == 1.0 and "sft_real" not in out
    assert all(torch.equal(a, b) for a, b in zip(actor0, _actor_params(sac))), "the actor moved during the warm-up"
    assert torch.equal(alpha0, sac.log_alpha.detach())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(critic0, sac.critic.parameters()))
    out = sac_update(sac, _batch(32, gen), beta=0.5, real=real)
    assert "critic_warmup" not in out and "sft_real" in out
    assert any(not torch.equal(a, b) for a, b in zip(actor0, _actor_params(sac))), "the actor learns after the warm-up"
