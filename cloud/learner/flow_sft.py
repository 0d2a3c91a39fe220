"""Supervised fine-tuning of the ``flow`` policy: conditional flow matching on demonstrated action chunks.

The flow policy's counterpart of :class:`~cloud.learner.bc.BC`, with the same
face to the trainer (``learner.algorithm = "bc"`` or ``"hg_dagger"`` with
``learner.policy = "flow"``). A batch holds each row's observation and the
chunk of the next ``horizon`` actions of its episode (``action_chunk``, in the
normalised [-1, 1] range) with ``chunk_valid`` marking the steps that were
really taken; see :mod:`cloud.learner.chunks` for how chunks are cut and
padded. Padded steps are left out of the loss by default (``mask_padding``).

Given camera ``views`` it trains the ``cnn_flow`` head instead (the same flow
head over per-view conv stacks, :class:`~shared.policy.CNNFlowActor`): each
batch then carries the frames of each pair's first observation under
``images.<camera>`` (the replay buffer's key, ``cloud.buffer.IMAGES``), and the
flow loss trains the conv encoder too (there is no critic to do it).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from shared.policy import CNNFlowActor, FlowActor, View
from shared.policy.cnn import DEFAULT_CHANNELS, DEFAULT_LATENT

from ..buffer.source import IMAGES
from .bc import check_fits
from .chunks import CHUNK, CHUNK_VALID, Chunks

__all__ = ["CHUNK", "CHUNK_VALID", "FlowSFT", "chunk_batch", "chunk_rows", "train_offline"]


class FlowSFT:
    """Flow-matching SFT of a :class:`FlowActor` (a :class:`CNNFlowActor` given ``views``), one Adam step per
    batch; resumes exactly from ``state_dict``."""

    def __init__(self, obs_dim: int, act_dim: int, horizon: int = 10, steps: int = 10,
                 hidden: tuple[int, ...] = (256, 256), lr: float = 1e-3, device: str | torch.device = "cpu",
                 seed: int = 0, name: str = "bc", mask_padding: bool = True, views: Sequence[View] = (),
                 channels: Sequence[int] = DEFAULT_CHANNELS, latent: int = DEFAULT_LATENT) -> None:
        """``views``: the cameras (name, HxWxC) a ``cnn_flow`` head reads, with its conv ``channels`` and
        ``latent`` features per view; none: the state-only ``flow`` head."""
        self.name = name
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        self.seed, self.lr, self.mask_padding = int(seed), float(lr), bool(mask_padding)
        self.image_fields: tuple[str, ...] = tuple(str(n) for n, _ in views)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            actor = (CNNFlowActor(obs_dim, act_dim, views, horizon, hidden, steps, channels, latent) if views
                     else FlowActor(obs_dim, act_dim, horizon, hidden, steps))
            self.actor = actor.to(self.device)
        self.optim = torch.optim.Adam(self.actor.parameters(), lr=lr)
        # The loss's noise and times come from the learner's own stream, so a resumed run replays exactly.
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.updates = 0

    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        loss = self.loss(batch)
        self.step(loss)
        return {"flow_loss": loss.item()}

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The flow-matching loss of one batch (noise and times from the learner's generator), not yet applied:
        RL-Co's Stage I weighs two of them (``cloud.rlco``)."""
        if CHUNK not in batch:
            raise ValueError(f"a flow policy trains on action chunks: the batch has no {CHUNK!r} "
                             f"(it has {sorted(batch)[:8]}); the demo ring keeps them when learner.policy = \"flow\"")
        obs = batch["obs"].to(self.device, torch.float32, non_blocking=True)
        chunk = batch[CHUNK].to(self.device, torch.float32, non_blocking=True)
        mask = batch.get(CHUNK_VALID) if self.mask_padding else None
        return self.actor.loss(obs, chunk, self.generator, None if mask is None else mask.to(self.device),
                               images=self._frames(batch))

    def _frames(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
        """The batch's frames of the cameras the head reads, uint8 on the device (None for the state head)."""
        if not self.image_fields:
            return None
        missing = [n for n in self.image_fields if IMAGES + n not in batch]
        if missing:
            raise ValueError(f"a cnn_flow policy reads cameras {list(self.image_fields)}: the batch has no "
                             f"{[IMAGES + n for n in missing]} (it has {sorted(batch)[:8]})")
        return {n: batch[IMAGES + n].to(self.device, non_blocking=True) for n in self.image_fields}

    def step(self, loss: Tensor) -> None:
        """One Adam step on ``loss`` (a function of this actor's weights)."""
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.updates += 1

    def actor_state(self) -> dict[str, Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.actor.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "lr": self.lr, "actor_arch": self.actor.arch(),
                "actor": self.actor.state_dict(), "optim": self.optim.state_dict(),
                "generator": self.generator.get_state(), "seed": self.seed, "updates": self.updates}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; ValueError when the dims or the policy's arch differ."""
        check_fits(d, self.obs_dim, self.act_dim, self.actor.arch())
        self.actor.load_state_dict(d["actor"])
        self.optim.load_state_dict(d["optim"])
        self.generator.set_state(d["generator"])
        self.updates = int(d["updates"])


def chunk_batch(chunks: Chunks, batch_size: int, rng: np.random.Generator) -> dict[str, Tensor]:
    """A uniform batch of training pairs (obs, action chunk, valid mask) as the update reads it."""
    if len(chunks) == 0:
        raise ValueError("cannot sample action chunks: there are no training pairs")
    return chunk_rows(chunks, rng.integers(0, len(chunks), batch_size))


def chunk_rows(chunks: Chunks, idx: np.ndarray) -> dict[str, Tensor]:
    """The batch of training pairs ``idx``."""
    return {"obs": torch.from_numpy(chunks.obs[idx]), CHUNK: torch.from_numpy(chunks.actions[idx]),
            CHUNK_VALID: torch.from_numpy(chunks.valid[idx].astype(np.float32))}


def train_offline(chunks: Chunks, updates: int, batch_size: int = 256, seed: int = 0, **kw: Any) -> FlowSFT:
    """SFT of a fresh flow policy on stored chunks (demonstrations exported or built with :mod:`.chunks`)."""
    sft = FlowSFT(chunks.obs.shape[1], chunks.actions.shape[2], horizon=chunks.actions.shape[1], seed=seed, **kw)
    rng = np.random.default_rng(seed)
    for _ in range(int(updates)):
        sft.update(chunk_batch(chunks, batch_size, rng))
    return sft
