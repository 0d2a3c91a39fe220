"""RL-Co's losses: SFT of the Gaussian actor, Stage I's alpha weighting, Stage II's beta term.

The flow policy's SFT loss is the flow-matching loss ``FlowSFT.loss`` of the flow learner
(``cloud.learner.flow_sft``), on chunks of demo actions (:class:`ChunkDemos`, cut by
``cloud.learner.chunks``); Stage I weighs it the same way (:func:`cotrain`).

SFT is the behaviour-cloning loss the learner already has (``cloud.learner.bc.bc_loss``):
the negative log-likelihood of the demonstrated action, atanh'ed back to the pre-tanh
Gaussian the actor outputs (the squash's Jacobian does not depend on the weights and is
left out). Reusing it keeps Stage I's policy the same function the BC learner trains and
the robots run.

Stage I weights the two datasets' mean losses exactly: alpha * L(D_sim) + (1 - alpha) *
L(D_real), each over its own batch, so a small D_real is not drowned by a large D_sim
whatever the batch sizes. ``mixed_batch`` is the other way to mix (one batch holding
round(ratio * n) sim rows), kept for callers that want one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import numpy as np
import torch
from torch import Tensor

from cloud.learner.bc import bc_loss
from cloud.learner.chunks import Chunks
from cloud.learner.flow_sft import chunk_rows
from shared.policy import GaussianActor

Batch = Mapping[str, Tensor]
Loss = Callable[[Batch], Tensor]  # one dataset's mean SFT loss over a batch of it


class Sampler(Protocol):
    """A dataset batches are drawn from: :class:`Demos` (rows) or :class:`ChunkDemos` (action chunks)."""

    @property
    def obs(self) -> np.ndarray: ...  # (n, obs_dim): one observation per row

    @property
    def act_dim(self) -> int: ...

    def __len__(self) -> int: ...

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class Demos:
    """A dataset in memory: flat observations and actions in [-1, 1], one row per step."""

    obs: np.ndarray  # (n, obs_dim) float32
    action: np.ndarray  # (n, act_dim) float32

    def __post_init__(self) -> None:
        if self.obs.ndim != 2 or self.action.ndim != 2 or len(self.obs) != len(self.action):
            raise ValueError(f"demos need obs (n, d) and action (n, a) of one length, got {self.obs.shape} "
                             f"and {self.action.shape}")

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def act_dim(self) -> int:
        return int(self.action.shape[1])

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """``n`` rows drawn uniformly with replacement."""
        if not len(self):
            raise ValueError("cannot sample from an empty dataset")
        return self.rows(rng.integers(0, len(self), n))

    def rows(self, idx: np.ndarray) -> dict[str, Tensor]:
        """The batch of rows ``idx``."""
        return {"obs": torch.from_numpy(self.obs[idx]), "action": torch.from_numpy(self.action[idx])}


@dataclass(frozen=True)
class ChunkDemos(Chunks):
    """A dataset as flow-policy training pairs: each row's observation and the chunk of its episode's next
    actions (``cloud.learner.chunks``: no chunk crosses an episode's end; padded steps are marked invalid)."""

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[2])

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """``n`` pairs drawn uniformly with replacement (as the flow learner's ``chunk_batch`` draws them):
        ``obs``, ``action_chunk``, ``chunk_valid``."""
        if not len(self):
            raise ValueError("cannot sample action chunks: there are no training pairs")
        return self.rows(rng.integers(0, len(self), n))

    def rows(self, idx: np.ndarray) -> dict[str, Tensor]:
        """The batch of pairs ``idx``."""
        return chunk_rows(self, idx)


def sft_loss(actor: GaussianActor, batch: Batch, device: torch.device | str = "cpu") -> Tensor:
    """Mean negative log-likelihood of the batch's actions under the actor (``bc_loss``)."""
    return bc_loss(actor, batch, torch.device(device))


def cotrain_sft(actor: GaussianActor, alpha: float, batch_sim: Batch | None, batch_real: Batch | None,
                device: torch.device | str = "cpu") -> tuple[Tensor, dict[str, float]]:
    """Stage I for the Gaussian actor: :func:`cotrain` of its ``sft_loss``."""
    return cotrain(lambda b: sft_loss(actor, b, device), alpha, batch_sim, batch_real)


def cotrain(loss: Loss, alpha: float, batch_sim: Batch | None, batch_real: Batch | None
            ) -> tuple[Tensor, dict[str, float]]:
    """Stage I: alpha * loss(D_sim batch) + (1 - alpha) * loss(D_real batch), and each part's value.

    At alpha = 0 the sim batch is not needed (and not evaluated), at alpha = 1 the real one:
    a zero weight contributes exactly nothing, not 0 * (a loss that might be inf).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    total: Tensor | None = None
    parts: dict[str, float] = {}
    for name, weight, batch in (("sim", alpha, batch_sim), ("real", 1.0 - alpha, batch_real)):
        if weight == 0.0:
            continue
        if batch is None:
            raise ValueError(f"alpha = {alpha} weighs D_{name} by {weight:g} but no {name} batch was given")
        part = loss(batch)
        parts[f"sft_{name}"] = float(part.detach())
        total = weight * part if total is None else total + weight * part
    assert total is not None  # alpha and 1 - alpha cannot both be 0
    return total, parts


def stage2_loss(rl_loss: Tensor, beta: float, sft_real: Tensor | None) -> Tensor:
    """Stage II's actor loss: L_RL(sim) + beta * SFT(D_real) (beta = 0: the RL loss alone)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta == 0.0:
        return rl_loss
    if sft_real is None:
        raise ValueError(f"beta = {beta} needs the SFT loss on D_real")
    return rl_loss + beta * sft_real


def mix_counts(n: int, ratio: float) -> tuple[int, int]:
    """(sim rows, real rows) of an ``n``-row batch holding ``ratio`` sim rows (rounded half to even)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mixing ratio must be in [0, 1], got {ratio}")
    k = int(round(ratio * n))
    return k, n - k


def mixed_batch(sim: Sampler, real: Sampler, n: int, ratio: float, rng: np.random.Generator) -> dict[str, Tensor]:
    """One batch of ``n`` rows, ``mix_counts(n, ratio)`` from each dataset; ``from_sim`` marks the sim rows."""
    k_sim, k_real = mix_counts(n, ratio)
    parts = [(d, k) for d, k in ((sim, k_sim), (real, k_real)) if k]
    drawn = [d.sample(k, rng) for d, k in parts]
    out = {key: torch.cat([b[key] for b in drawn]) for key in drawn[0]}
    out["from_sim"] = torch.cat([torch.full((k,), d is sim) for d, k in parts])
    return out
