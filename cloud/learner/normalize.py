"""Observation normalisation for state actors, folded into the first layer when published.

Fetch observations mix scales (positions near 1 m, velocities near 0.01):
behaviour cloning of 20 FetchPush demonstrations succeeds in 1 of 30
episodes on raw inputs and 10 of 30 on standardised ones (same actor, same
updates). The learner trains on ``(obs - mean) / std`` with statistics fitted
once, when training starts, from the rows it can sample; robots keep running
the plain actor architecture on raw observations, because publishing folds
the normalisation into the first linear layer: ``W' = W / std``,
``b' = b - W' mean``. Unfolding is the exact inverse for any statistics, so a
learner resuming from a published policy gets the same function back.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..buffer import SampleSource

log = logging.getLogger("fleetrl.normalize")

MIN_STD = 1e-2  # a constant input (a fixed goal, a gripper that never opens) is centred, not blown up
FIT_ROWS = 20_000


class ObsNormalizer:
    def __init__(self, mean: Tensor, std: Tensor):
        self.mean = mean.detach().to(torch.float32).cpu()
        self.std = std.detach().to(torch.float32).cpu().clamp_min(MIN_STD)

    @classmethod
    def fit(cls, source: SampleSource, seed: int, rows: int = FIT_ROWS) -> "ObsNormalizer":
        """Statistics of ``obs`` and ``next_obs`` over up to ``rows`` sampled rows (its own generator: the
        trainer's draws, and so a resumed run's, are not moved)."""
        batch = source.sample(max(1, min(rows, source.size)), np.random.default_rng(seed + 7_919))
        x = torch.from_numpy(np.concatenate([batch["obs"], batch["next_obs"]])).to(torch.float32)
        norm = cls(x.mean(0), x.std(0) if len(x) > 1 else torch.ones(x.shape[1]))
        log.info("event=observation_normaliser_fitted rows=%d dims=%d std_min=%.4g std_max=%.4g",
                 len(x) // 2, x.shape[1], float(norm.std.min()), float(norm.std.max()))
        return norm

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = dict(batch)
        for k in ("obs", "next_obs"):
            x = batch[k]
            out[k] = (x.to(torch.float32) - self.mean.to(x.device)) / self.std.to(x.device)
        return out

    @staticmethod
    def first_layer(state: Mapping[str, Tensor]) -> str:
        """The name prefix of the linear layer that reads the observation (an mlp_gaussian or flow actor)."""
        for prefix in ("trunk.0", "encoder.0", "head"):  # mlp_gaussian, flow, a hidden-less mlp
            if prefix + ".weight" in state:
                return prefix
        raise ValueError(f"no first linear layer among the actor's tensors {sorted(state)[:6]}")

    def fold(self, state: Mapping[str, Tensor], features: int = 0) -> dict[str, Tensor]:
        """Actor tensors trained on normalised inputs -> the same function of raw inputs. ``features``: the
        first layer's leading inputs that are not the state (a camera actor's trunk reads [image features,
        state]); only the state's columns are rescaled."""
        p = self.first_layer(state)
        out = dict(state)
        w = state[p + ".weight"]
        if w.shape[1] != features + len(self.mean):
            raise ValueError(f"{p} reads {w.shape[1]} inputs, not {features} features + {len(self.mean)} state")
        ws = w[:, features:] / self.std.to(w.device)
        out[p + ".weight"] = torch.cat([w[:, :features], ws], dim=1) if features else ws
        out[p + ".bias"] = state[p + ".bias"] - ws @ self.mean.to(w.device)
        return out

    def unfold(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The inverse of :meth:`fold`: raw-input tensors -> tensors for normalised inputs."""
        p = self.first_layer(state)
        out = dict(state)
        w = state[p + ".weight"]
        out[p + ".bias"] = state[p + ".bias"] + w @ self.mean.to(w.device)
        out[p + ".weight"] = w * self.std.to(w.device)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> "ObsNormalizer":
        return cls(torch.as_tensor(d["mean"]), torch.as_tensor(d["std"]))
