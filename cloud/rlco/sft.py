"""Stage I's trainer: the policy co-trained by SFT on D_sim and D_real with weight alpha.

Four policy kinds (``sft.policy``): the Gaussian actor, whose SFT loss is the NLL of the demo
action (``losses.sft_loss``), the camera actor (``cnn_gaussian``, the same NLL over frames and
state: ``images.cnn_sft_loss``), and the flow-matching head over the state (``flow``) or over
frames and state (``cnn_flow``), whose SFT loss is the flow learner's own (``FlowSFT.loss``) on
chunks of demo actions. Every kind takes one Adam step per pair of batches, weighted by alpha
exactly (``losses.cotrain``) or mixed into one batch (``weighting = "batch"``).

Observations are standardised with statistics of both datasets, fixed here for the whole recipe
(Stage II keeps them; publishing folds them into the first layer, ``ObsNormalizer.fold``):
Fetch mixes metre-scale positions with centimetre-scale velocities, and BC on raw inputs fails.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from cloud.learner.flow_sft import FlowSFT
from cloud.learner.normalize import ObsNormalizer
from shared.policy import CNNActor, GaussianActor, PolicyActor, View, build_gaussian
from shared.policy import cnn as cnn_kind
from shared.policy import mlp as mlp_kind

from . import rngstate
from .config import PIXEL_POLICIES, SFTConfig
from .images import cnn_sft_loss
from .losses import Batch, Sampler, cotrain, mixed_batch, sft_loss


def fit_normalizer(*datasets: Sampler) -> ObsNormalizer:
    x = torch.from_numpy(np.concatenate([d.obs for d in datasets if len(d)]))
    return ObsNormalizer(x.mean(0), x.std(0) if len(x) > 1 else torch.ones(x.shape[1]))


class SFTTrainer:
    """alpha * SFT(D_sim) + (1 - alpha) * SFT(D_real) of the Gaussian actor, one Adam step per pair of batches."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SFTConfig, norm: ObsNormalizer, seed: int = 0,
                 views: Sequence[View] = ()):
        """``views``: the cameras (name, HxWxC) a camera policy reads; a state policy takes none."""
        if bool(views) != (cfg.policy in PIXEL_POLICIES):
            raise ValueError(f"sft.policy = {cfg.policy!r} reads {'cameras' if not views else 'no cameras'}, "
                             f"given views {[n for n, _ in views]}")
        self.cfg, self.norm, self.views = cfg, norm, list(views)
        self.actor, self.optim = self._build(obs_dim, act_dim, seed)
        self.rng = np.random.default_rng(seed)
        self.updates = 0

    def _build(self, obs_dim: int, act_dim: int, seed: int) -> tuple[PolicyActor, torch.optim.Optimizer]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.gaussian: GaussianActor = build_gaussian(mlp_kind.arch(obs_dim, act_dim, self.cfg.hidden))
        return self.gaussian, torch.optim.Adam(self.gaussian.parameters(), lr=self.cfg.lr)

    def loss(self, batch: Batch) -> Tensor:
        """One dataset's SFT loss over a (normalised) batch of it."""
        return sft_loss(self.gaussian, batch)

    def _apply(self, loss: Tensor) -> None:
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()

    def _batch(self, d: Sampler, n: int) -> dict[str, Tensor]:
        b = d.sample(n, self.rng)
        return {**b, "obs": (b["obs"] - self.norm.mean) / self.norm.std}

    def step(self, alpha: float, sim: Sampler, real: Sampler) -> dict[str, float]:
        if self.cfg.weighting == "batch":
            b = mixed_batch(sim, real, 2 * self.cfg.batch_size, alpha, self.rng)
            loss = self.loss({**b, "obs": (b["obs"] - self.norm.mean) / self.norm.std})
            self._apply(loss)
            self.updates += 1
            return {"loss": float(loss.detach())}
        bs = self._batch(sim, self.cfg.batch_size) if alpha > 0 else None
        br = self._batch(real, self.cfg.batch_size) if alpha < 1 else None
        loss, parts = cotrain(self.loss, alpha, bs, br)
        self._apply(loss)
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


class FlowSFTTrainer(SFTTrainer):
    """The same co-training of the flow-matching head (``sft.policy = "flow"``, or ``"cnn_flow"`` over the
    frames of ``views`` too): batches are action chunks (:class:`~cloud.rlco.losses.ChunkDemos`; with
    cameras :class:`~cloud.rlco.images.ImageChunkDemos`, each pair with its first observation's frames),
    the loss and its noise are the flow learner's (``FlowSFT``)."""

    def _build(self, obs_dim: int, act_dim: int, seed: int) -> tuple[PolicyActor, torch.optim.Optimizer]:
        c = self.cfg
        self.flow = FlowSFT(obs_dim, act_dim, horizon=c.flow_horizon, steps=c.flow_steps, hidden=tuple(c.hidden),
                            lr=c.lr, seed=seed, views=self.views, channels=c.cnn_channels, latent=c.cnn_latent)
        return self.flow.actor, self.flow.optim

    def loss(self, batch: Batch) -> Tensor:
        return self.flow.loss(batch)

    def _apply(self, loss: Tensor) -> None:
        self.flow.step(loss)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.flow.generator.get_state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.flow.generator.set_state(d["generator"])


class CNNSFTTrainer(SFTTrainer):
    """The same co-training of the camera actor (``sft.policy = "cnn"``): batches carry each row's frames
    (:class:`~cloud.rlco.images.ImageDemos`), the loss is the Gaussian NLL over frames and state."""

    def _build(self, obs_dim: int, act_dim: int, seed: int) -> tuple[PolicyActor, torch.optim.Optimizer]:
        c = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            actor = build_gaussian(cnn_kind.arch(obs_dim, act_dim, c.hidden, self.views, c.cnn_channels, c.cnn_latent))
        assert isinstance(actor, CNNActor)
        self.gaussian = self.cnn = actor
        return actor, torch.optim.Adam(actor.parameters(), lr=c.lr)

    def loss(self, batch: Batch) -> Tensor:
        return cnn_sft_loss(self.cnn, batch)


def make_trainer(obs_dim: int, act_dim: int, cfg: SFTConfig, norm: ObsNormalizer, seed: int = 0,
                 views: Sequence[View] = ()) -> SFTTrainer:
    """Stage I's trainer for ``cfg.policy`` (``views``: the cameras a cnn or cnn_flow policy reads, name and
    HxWxC)."""
    kind = {"cnn": CNNSFTTrainer, "flow": FlowSFTTrainer, "cnn_flow": FlowSFTTrainer}.get(cfg.policy, SFTTrainer)
    return kind(obs_dim, act_dim, cfg, norm, seed, views)
