"""Soft Actor-Critic learning core: pure tensors in, floats out (no I/O, no threads).

Speed notes (this runs on a CPU learner): the twin critics are one batched
ensemble module (one ``baddbmm`` per layer computes both Q heads), critic, actor
and temperature losses are summed into a single backward pass and stepped by a
single Adam, and the soft target update is one fused ``_foreach_lerp_``.  The
actor is trained against the critic *before* this step's critic update (as in
the original SAC paper's simultaneous update), which is what allows one backward.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shared.policy import Actor


@dataclass
class SACConfig:
    """Hyper-parameters; defaults tuned for FetchReachDense (50-step episodes)."""

    hidden: tuple[int, ...] = (256, 256)
    lr: float = 1e-3
    gamma: float = 0.98
    tau: float = 0.005
    batch_size: int = 256  # for the caller's sampler; update() takes whatever batch it is given
    init_alpha: float = 0.02
    target_entropy: float | None = None  # None -> -act_dim


class QEnsemble(nn.Module):
    """``n`` independent Q(s, a) MLPs evaluated together with batched matmuls."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], n: int = 2) -> None:
        super().__init__()
        dims = [in_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)  # same init as nn.Linear
            self.weights.append(nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound)))
        self.n = n

    def forward(self, x: Tensor, detach_params: bool = False) -> Tensor:
        """Q values ``[n, B]`` for inputs ``[B, in_dim]``.

        ``detach_params`` lets the actor loss flow through the critic without
        touching the critic's gradients.
        """
        h = x.unsqueeze(0).expand(self.n, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if detach_params:
                w, b = w.detach(), b.detach()
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = h.relu_()
        return h.squeeze(-1)


class SAC:
    """SAC with twin critics, Polyak targets and learned temperature."""

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: SACConfig, device: str = "cpu", seed: int = 0
    ) -> None:
        self.cfg = cfg
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.device = torch.device(device)
        hidden = tuple(int(h) for h in cfg.hidden)
        # Seed network init without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(obs_dim, act_dim, hidden).to(self.device)
            self.critic = QEnsemble(obs_dim + act_dim, hidden).to(self.device)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(
            math.log(cfg.init_alpha), device=self.device, requires_grad=True
        )
        self.target_entropy = (
            float(-act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        # Own noise stream: checkpoint/restore reproduces updates bit-for-bit.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.optim = torch.optim.Adam(
            [*self.actor.parameters(), *self.critic.parameters(), self.log_alpha],
            lr=cfg.lr,
            fused=True,
        )
        self._critic_params: list[torch.Tensor] = list(self.critic.parameters())
        self._target_params: list[torch.Tensor] = list(self.critic_target.parameters())
        self.updates = 0

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One gradient step on critics, actor and alpha, then a soft target update.

        ``terminated`` marks true terminal states only: time-limit truncation must be
        0 here so the critic keeps bootstrapping through it.
        """
        dev = self.device
        obs = batch["obs"].to(dev, torch.float32)
        action = batch["action"].to(dev, torch.float32)
        reward = batch["reward"].to(dev, torch.float32).reshape(-1)
        next_obs = batch["next_obs"].to(dev, torch.float32)
        not_done = 1.0 - batch["terminated"].to(dev, torch.float32).reshape(-1)
        gamma = self.cfg.gamma
        alpha = self.log_alpha.detach().exp()

        with torch.no_grad():
            next_a, next_logp = self.actor.sample(next_obs, self.generator)
            q_next = self.critic_target(torch.cat([next_obs, next_a], -1)).min(0).values
            target = reward + gamma * not_done * (q_next - alpha * next_logp)

        q = self.critic(torch.cat([obs, action], -1))  # [2, B]
        critic_loss = 0.5 * (q - target).pow(2).mean(1).sum()

        pi_a, logp = self.actor.sample(obs, self.generator)
        q_pi = self.critic(torch.cat([obs, pi_a], -1), detach_params=True).min(0).values
        actor_loss = (alpha * logp - q_pi).mean()

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()

        self.optim.zero_grad(set_to_none=True)
        (critic_loss + actor_loss + alpha_loss).backward()
        self.optim.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.tau)
        self.updates += 1
        return {
            "critic_loss": critic_loss.item(),
            "actor_loss": actor_loss.item(),
            "alpha_loss": alpha_loss.item(),
            "alpha": alpha.item(),
            "entropy": -logp.detach().mean().item(),
            "q_mean": q.detach().mean().item(),
        }

    def actor_state(self) -> dict[str, Tensor]:
        """Detached CPU copies of the actor weights, safe to hand to another thread."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.actor.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training exactly (nets, targets, optimizer, RNG)."""
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "cfg": asdict(self.cfg),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "optim": self.optim.state_dict(),
            "generator": self.generator.get_state(),
            "updates": self.updates,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this instance."""
        if (d["obs_dim"], d["act_dim"]) != (self.obs_dim, self.act_dim):
            raise ValueError(
                f"checkpoint dims (obs={d['obs_dim']}, act={d['act_dim']}) do not match "
                f"this SAC (obs={self.obs_dim}, act={self.act_dim})"
            )
        self.actor.load_state_dict(d["actor"])
        self.critic.load_state_dict(d["critic"])
        self.critic_target.load_state_dict(d["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(d["log_alpha"])
        self.optim.load_state_dict(d["optim"])
        self.generator.set_state(d["generator"])
        self.updates = int(d["updates"])
