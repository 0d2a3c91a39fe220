"""Stage II with SAC, the off-policy alternative: the learner's SAC core plus beta * SFT(D_real).

The core (``cloud.learner.sac.SAC.losses``) gives the critic, actor and temperature losses of
one batch; RL-Co adds beta * SFT(D_real) to the actor's and takes the single Adam step the core
takes. The actor starts as Stage I's; transitions from the sim envs go to a plain replay of
standardised observations (Stage I's statistics), kept in the stage checkpoint so a resumed
stage samples what it had.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cloud.learner import checkpoint
from cloud.learner.normalize import ObsNormalizer
from cloud.learner.sac import SAC, SACConfig
from shared.faults import crash_point
from shared.policy import GaussianActor

from . import rngstate
from .losses import Demos, sft_loss, stage2_loss

if TYPE_CHECKING:
    from pathlib import Path

    from .stages import Recipe

KEYS = ("obs", "action", "reward", "next_obs", "terminated")


class Replay:
    """A fixed-capacity table of transitions (standardised observations)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.data = {"obs": np.zeros((capacity, obs_dim), np.float32), "action": np.zeros((capacity, act_dim), np.float32),
                     "reward": np.zeros(capacity, np.float32), "next_obs": np.zeros((capacity, obs_dim), np.float32),
                     "terminated": np.zeros(capacity, np.float32)}
        self.size = 0

    def add(self, **cols: np.ndarray) -> None:
        n = len(cols["obs"])
        cap = len(self.data["obs"])
        idx = (self.size + np.arange(n)) % cap
        for k in KEYS:
            self.data[k][idx] = cols[k]
        self.size = min(cap, self.size + n) if self.size < cap else cap

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, n)
        return {k: torch.from_numpy(v[idx]) for k, v in self.data.items()}


def sac_update(sac: SAC, batch: dict[str, torch.Tensor], beta: float, real: dict[str, torch.Tensor] | None
               ) -> dict[str, float]:
    """One SAC step with the actor loss L_actor + beta * SFT(D_real). During the critic warm-up
    (``rl.critic_warmup`` iterations) only the critics learn: a fresh critic's Q would pull Stage I's
    actor anywhere, and Adam leaves parameters without a gradient as they are."""
    warm = sac.warming_up
    critic_loss, actor_loss, alpha_loss, _ = sac.losses(batch, actor=not warm)
    sft = sft_loss(sac.actor, real) if beta > 0 and real is not None and not warm else None
    total = critic_loss if warm else critic_loss + stage2_loss(actor_loss, beta, sft) + alpha_loss
    sac.optim.zero_grad(set_to_none=True)
    total.backward()
    sac.optim.step()
    with torch.no_grad():
        torch._foreach_lerp_(sac._target_params, sac._critic_params, sac.cfg.tau)
    sac.updates += 1
    out = {"critic_loss": float(critic_loss.detach()), "actor_loss": float(actor_loss.detach()),
           **({"critic_warmup": 1.0} if warm else {})}
    if sft is not None:
        out["sft_real"] = float(sft.detach())
    return out


def run_sac(recipe: "Recipe", actor: GaussianActor, norm: ObsNormalizer, real: Demos, ckpt: "Path") -> None:
    """Stage II (rl.algorithm = "sac") of ``recipe``, from ``actor`` (Stage I's), resumable from ``ckpt``."""
    from . import data

    cfg, rl = recipe.cfg, recipe.cfg.rl
    per_iteration = int(rl.sac_updates_per_step * rl.steps * rl.envs)
    sac = SAC(actor.obs_dim, actor.act_dim, SACConfig(hidden=tuple(cfg.sft.hidden), lr=rl.lr, gamma=rl.gamma,
                                                      critic_warmup_updates=rl.critic_warmup * per_iteration),
              seed=cfg.seed)
    sac.actor.load_state_dict(actor.state_dict())
    replay = Replay(max(1, rl.iterations * rl.envs * rl.steps), actor.obs_dim, actor.act_dim)
    rng = np.random.default_rng(cfg.seed)
    it = 0
    if ckpt.exists():
        st = checkpoint.load(ckpt)
        sac.load_state_dict(st["sac"])
        replay.data = {k: np.asarray(v.numpy()) for k, v in st["replay"].items()}
        replay.size, it, rng = int(st["size"]), int(st["iterations"]), rngstate.load(st["rng"])
    recipe.event(event="stage_start", stage="rl", start=it, total=rl.iterations)
    mean, std = norm.mean.numpy(), norm.std.numpy()
    envs = data.sim_envs(cfg, first_seed=cfg.seed * 100_003 + it * rl.envs)
    metrics: dict[str, Any] = {}
    t0, steps = time.monotonic(), 0
    try:
        while it < rl.iterations:
            eps0, succ0 = envs.episodes, envs.successes
            for _ in range(rl.steps):
                obs = (envs.obs - mean) / std
                with torch.no_grad():
                    a = sac.actor.act(torch.from_numpy(obs.astype(np.float32))).numpy()
                s = envs.step(a)
                replay.add(obs=obs, action=a, reward=s.reward, next_obs=(s.next_obs - mean) / std,
                           terminated=s.terminated.astype(np.float32))
                steps += envs.n
            for _ in range(per_iteration):
                rb = None
                if rl.beta > 0:
                    r = real.sample(rl.minibatch, rng)
                    rb = {"obs": (r["obs"] - norm.mean) / norm.std, "action": r["action"]}
                metrics = sac_update(sac, replay.sample(rl.minibatch, rng), rl.beta, rb)
            it += 1
            metrics.update({"sim_success": (envs.successes - succ0) / max(1, envs.episodes - eps0),
                            "env_steps_per_s": steps / (time.monotonic() - t0)})
            if it % rl.checkpoint_every == 0 and it < rl.iterations:
                checkpoint.save(ckpt, {"sac": sac.state_dict(), "replay": {k: torch.from_numpy(v) for k, v in
                                                                           replay.data.items()},
                                       "size": replay.size, "iterations": it, "rng": rngstate.dump(rng)})
                recipe.event(event="checkpoint", stage="rl", at=it)
                crash_point("rlco_rl_checkpoint")
            recipe.progress("Stage II: RL (SAC)", it, rl.iterations, metrics)
    finally:
        envs.close()
    recipe._write_stage("rl", sac.actor.state_dict(), sac.actor.arch(), norm, metrics)
    recipe._finish("rl")
