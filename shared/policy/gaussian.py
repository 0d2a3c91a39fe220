"""The squashed-Gaussian head every actor kind shares: one place for the maths.

An actor kind only says how it turns inputs into a pre-tanh ``(mean, log_std)``;
sampling, the tanh squash and its numerically stable log-prob live here, so
the MLP and the CNN actors can never disagree on what an action is.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

Images = Mapping[str, Tensor]


def split_head(out: Tensor) -> tuple[Tensor, Tensor]:
    """A head's ``2 * act_dim`` outputs as mean and log_std (clamped so exp() stays sane)."""
    mean, log_std = out.chunk(2, dim=-1)
    return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


def squashed_sample(mean: Tensor, log_std: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Reparameterised tanh-squashed action and its log-prob (for SAC's gradients).

    ``generator`` lets the learner own its noise stream, so checkpoints replay exactly.
    """
    eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    u = mean + log_std.exp() * eps
    action = torch.tanh(u)
    # log N(u; mean, std) minus log|d tanh/du|, the latter in the stable form
    # 2*(log2 - u - softplus(-2u)) which avoids log(1 - tanh^2) underflow.
    log_prob = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
    log_prob = log_prob - (2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))).sum(-1)
    return action, log_prob


def squashed_act(mean: Tensor, log_std: Tensor, deterministic: bool) -> Tensor:
    """Action in [-1, 1] for rollout; deterministic uses tanh(mean) (evaluation)."""
    if deterministic:
        return torch.tanh(mean)
    return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))


def mlp(in_dim: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    """Linear/ReLU stack (tensor names ``N.weight``, N even) and its output width."""
    layers: list[nn.Module] = []
    last = in_dim
    for h in hidden:
        layers += [nn.Linear(last, h), nn.ReLU()]
        last = h
    return nn.Sequential(*layers), last


class GaussianActor(nn.Module):
    """What every actor kind is: ``forward`` gives (mean, log_std); the rest follows from it."""

    obs_dim: int
    act_dim: int
    hidden: list[int]

    def forward(self, obs: Tensor, images: Images | None = None) -> tuple[Tensor, Tensor]:
        """Pre-tanh Gaussian mean and log_std."""
        raise NotImplementedError

    def _arch(self, kind: str, version: int, **more: Any) -> dict[str, Any]:
        """The fields every kind's arch has, then the kind's own."""
        return {"kind": kind, "version": version, "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "hidden": list(self.hidden), **more}

    def sample(
        self, obs: Tensor, generator: torch.Generator | None = None, images: Images | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised action in [-1, 1] and its log-prob."""
        mean, log_std = self(obs, images)
        return squashed_sample(mean, log_std, generator)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False, images: Images | None = None) -> Tensor:
        """Action in [-1, 1] for rollout; deterministic uses tanh(mean) (evaluation)."""
        mean, log_std = self(obs, images)
        return squashed_act(mean, log_std, deterministic)

    def arch(self) -> dict[str, Any]:
        """JSON-able description that ``build_actor`` turns back into this module."""
        raise NotImplementedError
