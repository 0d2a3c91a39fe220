"""Stage I's trainer: the Gaussian actor, co-trained by SFT on D_sim and D_real with weight alpha.

Observations are standardised with statistics of both datasets, fixed here for the whole recipe
(Stage II keeps them; publishing folds them into the first layer, ``ObsNormalizer.fold``):
Fetch mixes metre-scale positions with centimetre-scale velocities, and BC on raw inputs fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from cloud.learner.normalize import ObsNormalizer
from shared.policy import GaussianActor, build_gaussian
from shared.policy import mlp as mlp_kind

from . import rngstate
from .config import SFTConfig
from .losses import Demos, cotrain_sft, mixed_batch, sft_loss


def actor_arch(obs_dim: int, act_dim: int, hidden: list[int]) -> dict[str, Any]:
    return {"kind": mlp_kind.KIND, "version": mlp_kind.VERSION, "obs_dim": int(obs_dim), "act_dim": int(act_dim),
            "hidden": [int(h) for h in hidden]}


def fit_normalizer(*datasets: Demos) -> ObsNormalizer:
    x = torch.from_numpy(np.concatenate([d.obs for d in datasets if len(d)]))
    return ObsNormalizer(x.mean(0), x.std(0) if len(x) > 1 else torch.ones(x.shape[1]))


class SFTTrainer:
    """alpha * SFT(D_sim) + (1 - alpha) * SFT(D_real), one Adam step per pair of batches."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SFTConfig, norm: ObsNormalizer, seed: int = 0):
        self.cfg, self.norm = cfg, norm
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor: GaussianActor = build_gaussian(actor_arch(obs_dim, act_dim, cfg.hidden))
        self.optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng(seed)
        self.updates = 0

    def _batch(self, d: Demos) -> dict[str, Tensor]:
        b = d.sample(self.cfg.batch_size, self.rng)
        return {"obs": (b["obs"] - self.norm.mean) / self.norm.std, "action": b["action"]}

    def step(self, alpha: float, sim: Demos, real: Demos) -> dict[str, float]:
        if self.cfg.weighting == "batch":
            b = mixed_batch(sim, real, 2 * self.cfg.batch_size, alpha, self.rng)
            loss = sft_loss(self.actor, {"obs": (b["obs"] - self.norm.mean) / self.norm.std, "action": b["action"]})
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            self.optim.step()
            self.updates += 1
            return {"loss": float(loss.detach())}
        bs = self._batch(sim) if alpha > 0 else None
        br = self._batch(real) if alpha < 1 else None
        loss, parts = cotrain_sft(self.actor, alpha, bs, br)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.updates += 1
        return {"loss": float(loss.detach()), **parts}

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "optim": self.optim.state_dict(), "rng": rngstate.dump(self.rng),
                "updates": self.updates, "norm": self.norm.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.actor.load_state_dict(d["actor"])
        self.optim.load_state_dict(d["optim"])
        self.rng = rngstate.load(d["rng"])
        self.updates = int(d["updates"])
        self.norm = ObsNormalizer.from_state(d["norm"])
