"""PPO with GAE over vectorised sim envs, and RL-Co's Stage II term beta * SFT(D_real).

The actor is the squashed-Gaussian actor robots run (Stage I's output); the critic is its own
MLP. Log-probabilities are taken of the pre-tanh sample ``u`` (kept from the rollout): the tanh
Jacobian does not depend on the weights, so it cancels in the ratio, and ``u``-space is where
``bc_loss`` measures SFT too, so the two terms of the Stage II actor loss speak of the same
distribution. Observations are standardised with statistics fixed at Stage I (they fold into
the published first layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shared.policy import GaussianActor
from shared.policy.gaussian import mlp

from . import rngstate
from .config import RLConfig
from .gae import gae
from .losses import Demos, sft_loss, stage2_loss
from .vecenv import VecEnv

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Critic(nn.Module):
    """V(s): an MLP over the (standardised) observation."""

    def __init__(self, obs_dim: int, hidden: list[int]):
        super().__init__()
        self.trunk, last = mlp(obs_dim, hidden)
        self.out = nn.Linear(last, 1)

    def forward(self, obs: Tensor) -> Tensor:
        return self.out(self.trunk(obs)).squeeze(-1)


def gaussian_logp(mean: Tensor, log_std: Tensor, u: Tensor) -> Tensor:
    """log N(u; mean, exp(log_std)), summed over action dims."""
    return (-0.5 * ((u - mean) / log_std.exp()).pow(2) - log_std - _HALF_LOG_2PI).sum(-1)


def set_log_std(actor: GaussianActor, log_std: float) -> None:
    """Make the actor's pre-tanh std state-independent exp(log_std): zero the log-std half of its head
    and set its bias (SFT on near-deterministic demos leaves too little noise to explore with)."""
    head = getattr(actor, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError("set_log_std needs an mlp_gaussian actor (a linear head)")
    with torch.no_grad():
        head.weight[actor.act_dim:] = 0.0
        head.bias[actor.act_dim:] = log_std


@dataclass
class Rollout:
    obs: np.ndarray  # (T, N, d)
    u: np.ndarray  # (T, N, a) pre-tanh actions
    logp: np.ndarray  # (T, N)
    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episodes: int
    successes: int


class PPO:
    """PPO-clip over ``VecEnv`` rollouts; ``update`` adds beta * SFT(D_real) to the actor loss."""

    def __init__(self, actor: GaussianActor, mean: Tensor, std: Tensor, cfg: RLConfig, hidden: list[int],
                 seed: int = 0):
        self.cfg = cfg
        self.actor = actor
        self.mean, self.std = mean.float(), std.float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.critic = Critic(actor.obs_dim, hidden)
        self.optim = torch.optim.Adam([*actor.parameters(), *self.critic.parameters()], lr=cfg.lr)
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.iterations = 0

    def norm(self, x: np.ndarray | Tensor) -> Tensor:
        t = torch.as_tensor(x, dtype=torch.float32)
        return (t - self.mean) / self.std

    @torch.no_grad()
    def collect(self, envs: VecEnv, steps: int) -> Rollout:
        """``steps`` steps of every env with actions sampled from the actor."""
        T, n, d = steps, envs.n, envs.obs.shape[1]
        a_dim = self.actor.act_dim
        obs, nxt = np.zeros((T, n, d), np.float32), np.zeros((T, n, d), np.float32)
        us, logps = np.zeros((T, n, a_dim), np.float32), np.zeros((T, n), np.float32)
        rew, term, trunc = np.zeros((T, n), np.float32), np.zeros((T, n), bool), np.zeros((T, n), bool)
        ep0, succ0 = envs.episodes, envs.successes
        for t in range(T):
            obs[t] = envs.obs
            mean, log_std = self.actor(self.norm(envs.obs))
            u = mean + log_std.exp() * torch.randn(mean.shape, generator=self.gen)
            logps[t] = gaussian_logp(mean, log_std, u).numpy()
            us[t] = u.numpy()
            s = envs.step(torch.tanh(u).numpy())
            nxt[t], rew[t], term[t], trunc[t] = s.next_obs, s.reward, s.terminated, s.truncated
        return Rollout(obs, us, logps, nxt, rew, term, trunc, envs.episodes - ep0, envs.successes - succ0)

    def update(self, ro: Rollout, real: Demos | None = None) -> dict[str, float]:
        """``epochs`` passes of minibatches over the rollout; returns the last epoch's mean losses."""
        cfg = self.cfg
        T, n = ro.reward.shape
        with torch.no_grad():
            values = self.critic(self.norm(ro.obs.reshape(T * n, -1))).reshape(T, n).numpy()
            next_values = self.critic(self.norm(ro.next_obs.reshape(T * n, -1))).reshape(T, n).numpy()
        adv, ret = gae(ro.reward, values, next_values, ro.terminated, ro.truncated, cfg.gamma, cfg.gae_lambda)
        obs = self.norm(ro.obs.reshape(T * n, -1))
        u = torch.from_numpy(ro.u.reshape(T * n, -1))
        old_logp = torch.from_numpy(ro.logp.reshape(-1))
        adv_t, ret_t = torch.from_numpy(adv.reshape(-1)), torch.from_numpy(ret.reshape(-1))
        total = T * n
        mb = min(cfg.minibatch, total)
        stats: dict[str, list[float]] = {}
        train_actor = self.iterations >= cfg.critic_warmup
        for _ in range(cfg.epochs):
            perm = torch.from_numpy(self.rng.permutation(total))
            for start in range(0, total - mb + 1, mb):
                idx = perm[start:start + mb]
                a = adv_t[idx]
                a = (a - a.mean()) / (a.std() + 1e-8) if len(a) > 1 else a
                mean, log_std = self.actor(obs[idx])
                logp = gaussian_logp(mean, log_std, u[idx])
                ratio = (logp - old_logp[idx]).exp()
                pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                entropy = (log_std + 0.5 + _HALF_LOG_2PI).sum(-1).mean()
                rl_actor = pg - cfg.entropy_coef * entropy
                sft = None
                if train_actor and cfg.beta > 0 and real is not None:
                    rb = real.sample(mb, self.rng)
                    sft = sft_loss(self.actor, {"obs": self.norm(rb["obs"]), "action": rb["action"]})
                actor_loss = stage2_loss(rl_actor, cfg.beta if sft is not None else 0.0, sft)
                v_loss = 0.5 * (self.critic(obs[idx]) - ret_t[idx]).pow(2).mean()
                self.optim.zero_grad(set_to_none=True)
                ((actor_loss if train_actor else 0.0) + cfg.value_coef * v_loss).backward()
                nn.utils.clip_grad_norm_([*self.actor.parameters(), *self.critic.parameters()], cfg.max_grad_norm)
                self.optim.step()
                for k, v in (("pg_loss", pg), ("value_loss", v_loss), ("entropy", entropy),
                             ("sft_real", sft), ("approx_kl", (old_logp[idx] - logp).mean())):
                    if v is not None:
                        stats.setdefault(k, []).append(float(v.detach()))
        self.iterations += 1
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(), "optim": self.optim.state_dict(),
                "gen": self.gen.get_state(), "rng": rngstate.dump(self.rng), "iterations": self.iterations}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.actor.load_state_dict(d["actor"])
        self.critic.load_state_dict(d["critic"])
        self.optim.load_state_dict(d["optim"])
        self.gen.set_state(d["gen"])
        self.rng = rngstate.load(d["rng"])
        self.iterations = int(d["iterations"])

