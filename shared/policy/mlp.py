"""``mlp_gaussian`` v1: a squashed-Gaussian MLP over the state vector.

Unchanged since the first release (tensor names ``trunk.N.weight``,
``head.weight``), so weights published before the registry still load.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from .gaussian import GaussianActor, Images, mlp, split_head

KIND = "mlp_gaussian"
VERSION = 1


class Actor(GaussianActor):
    """Squashed-Gaussian MLP actor; outputs actions in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.hidden = [int(h) for h in hidden]
        self.trunk, last = mlp(self.obs_dim, self.hidden)
        # One head producing mean and log_std together: a single matmul instead of two.
        self.head = nn.Linear(last, 2 * self.act_dim)

    def forward(self, obs: Tensor, images: Images | None = None) -> tuple[Tensor, Tensor]:
        """Pre-tanh Gaussian mean and log_std (clamped to keep exp() numerically sane)."""
        if images:
            raise ValueError(f"a {KIND} policy reads no images, got {sorted(images)[:8]}")
        return split_head(self.head(self.trunk(obs)))

    def arch(self) -> dict[str, Any]:
        return self._arch(KIND, VERSION)


def arch(obs_dim: int, act_dim: int, hidden: Sequence[int]) -> dict[str, Any]:
    """The arch dict ``build_gaussian`` turns into an untrained actor of this kind (what ``Actor.arch`` says)."""
    return {"kind": KIND, "version": VERSION, "obs_dim": int(obs_dim), "act_dim": int(act_dim),
            "hidden": [int(h) for h in hidden]}
