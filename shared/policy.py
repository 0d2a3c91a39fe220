"""Policy network shared by robots (inference) and the learner (training).

Robots receive weights plus the ``arch`` dict and rebuild the exact module with
:func:`build_actor`, so the two sides never drift on layer shapes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

ARCH_VERSION = 1
ARCH_KIND = "mlp_gaussian"
LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_LOG_2 = math.log(2.0)
MAX_HIDDEN_LAYERS = 64  # a deeper MLP is not a policy this build trains; parameters are capped separately


class Actor(nn.Module):
    """Squashed-Gaussian MLP actor; outputs actions in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.hidden = [int(h) for h in hidden]
        layers: list[nn.Module] = []
        last = self.obs_dim
        for h in self.hidden:
            layers += [nn.Linear(last, h), nn.ReLU()]
            last = h
        self.trunk = nn.Sequential(*layers)
        # One head producing mean and log_std together: a single matmul instead of two.
        self.head = nn.Linear(last, 2 * self.act_dim)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-tanh Gaussian mean and log_std (clamped to keep exp() numerically sane)."""
        mean, log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(
        self, obs: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised tanh-squashed action and its log-prob (for SAC's gradients).

        ``generator`` lets the learner own its noise stream, so checkpoints replay exactly.
        """
        mean, log_std = self(obs)
        std = log_std.exp()
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
        u = mean + std * eps
        action = torch.tanh(u)
        # log N(u; mean, std) minus log|d tanh/du|, the latter in the stable form
        # 2*(log2 - u - softplus(-2u)) which avoids log(1 - tanh^2) underflow.
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))).sum(-1)
        return action, log_prob

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Action in [-1, 1] for rollout; deterministic uses tanh(mean) (evaluation)."""
        mean, log_std = self(obs)
        if deterministic:
            return torch.tanh(mean)
        return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))

    def arch(self) -> dict[str, Any]:
        """JSON-able description that :func:`build_actor` turns back into this module."""
        return {
            "kind": ARCH_KIND,
            "version": ARCH_VERSION,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden": list(self.hidden),
        }


def _positive_int(arch: dict[str, Any], key: str) -> int:
    value = arch.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"policy arch field {key!r} must be a positive int, got {value!r}")
    return value


def actor_shapes(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the :class:`Actor` that ``arch`` describes, computed without
    allocating it, so weights from the wire are checked before a network is built."""
    obs_dim, act_dim, hidden = _checked(arch)
    shapes: dict[str, tuple[int, ...]] = {}
    last = obs_dim
    for i, h in enumerate(hidden):  # trunk = Linear, ReLU, Linear, ReLU, ...
        shapes[f"trunk.{2 * i}.weight"], shapes[f"trunk.{2 * i}.bias"] = (h, last), (h,)
        last = h
    shapes["head.weight"], shapes["head.bias"] = (2 * act_dim, last), (2 * act_dim,)
    return shapes


def param_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def build_actor(arch: dict[str, Any], max_params: int | None = None) -> Actor:
    """Rebuild an :class:`Actor` from ``arch``; raises ValueError on anything it can't honour,
    including more than ``max_params`` parameters (checked before any memory is taken)."""
    obs_dim, act_dim, hidden = _checked(arch)
    if max_params is not None and (n := param_count(actor_shapes(arch))) > max_params:
        raise ValueError(f"policy arch has {n} parameters, more than the limit {max_params}")
    return Actor(obs_dim, act_dim, hidden)


def _checked(arch: dict[str, Any]) -> tuple[int, int, list[int]]:
    if not isinstance(arch, dict):
        raise ValueError(f"policy arch must be a dict, got {type(arch).__name__}")
    kind = arch.get("kind")
    if kind != ARCH_KIND:
        raise ValueError(f"unknown policy arch kind {kind!r} (expected {ARCH_KIND!r})")
    version = arch.get("version")
    if version != ARCH_VERSION:
        raise ValueError(
            f"unsupported policy arch version {version!r} for kind {kind!r} "
            f"(this build supports version {ARCH_VERSION})"
        )
    obs_dim = _positive_int(arch, "obs_dim")
    act_dim = _positive_int(arch, "act_dim")
    hidden = arch.get("hidden")
    if not isinstance(hidden, (list, tuple)) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise ValueError(f"policy arch field 'hidden' must be a list of positive ints, got {str(hidden)[:80]}")
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"policy arch has {len(hidden)} hidden layers, at most {MAX_HIDDEN_LAYERS}")
    return obs_dim, act_dim, list(hidden)
