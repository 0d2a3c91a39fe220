"""``flow`` v1: a conditional flow-matching action head emitting action chunks.

An MLP encodes the state vector once; a second MLP is the velocity field
``v(x_t, t | obs)`` over a flattened chunk of ``horizon`` actions. Training is
conditional flow matching on the straight (rectified) path from Gaussian noise
``x0`` to the demonstrated chunk ``x1``: ``x_t = (1 - t) x0 + t x1``, target
velocity ``x1 - x0`` (Lipman et al. 2023; Liu et al. 2023). Sampling integrates
the field with ``steps`` Euler steps from noise (or from zeros, ``deterministic``,
so a robot's action is reproducible) and clamps to [-1, 1], the normalised
action range every policy kind shares. A chunk lets the control loop execute
several actions per inference (receding horizon); :meth:`FlowActor.act` returns
the first action so code that wants one action per call keeps working.
:mod:`.cnn_flow` is the same head over camera views (``cnn_flow``): it only
changes :meth:`FlowActor.features`, what the field is conditioned on.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .gaussian import Images, mlp

KIND = "flow"
VERSION = 1
TIME_FEATURES = 32  # sinusoidal features of t fed to the velocity field (no parameters: not in the arch)
MAX_HORIZON = 256
MAX_STEPS = 100


def time_features(t: Tensor, n: int = TIME_FEATURES) -> Tensor:
    """``[B] -> [B, n]`` sin/cos features of t in [0, 1]; fixed frequencies, so robots need no extra tensors."""
    half = n // 2
    freqs = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device) * (-math.log(1000.0) / max(half - 1, 1)))
    angles = (t[:, None] * 1000.0) * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowActor(nn.Module):
    """Flow-matching policy over the state vector: obs ``[B, obs_dim]`` -> chunk ``[B, horizon, act_dim]``."""

    def __init__(self, obs_dim: int, act_dim: int, horizon: int = 10, hidden: Sequence[int] = (256, 256),
                 steps: int = 10, image_features: int = 0) -> None:
        """``image_features``: width of camera features a subclass puts before the state vector (``cnn_flow``)."""
        super().__init__()
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.horizon = int(horizon)
        self.steps = int(steps)
        self.hidden = [int(h) for h in hidden]
        if (min(self.act_dim, self.horizon, self.steps) < 1 or self.obs_dim + int(image_features) < 1
                or self.obs_dim < 0 or not self.hidden):
            raise ValueError(f"a flow policy needs act_dim, horizon, steps >= 1, an input and a hidden layer, got "
                             f"obs_dim={obs_dim} act_dim={act_dim} horizon={horizon} steps={steps} hidden={hidden}")
        flat = self.horizon * self.act_dim
        self.encoder, feat = mlp(int(image_features) + self.obs_dim, self.hidden)
        self.velocity, last = mlp(feat + flat + TIME_FEATURES, self.hidden)
        self.head = nn.Linear(last, flat)

    def _check(self, obs: Tensor) -> None:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"a flow policy reads obs [B, {self.obs_dim}], got {list(obs.shape)}")

    def features(self, obs: Tensor, images: Images | None = None) -> Tensor:
        """What the velocity field is conditioned on, computed once per chunk (not once per Euler step)."""
        self._check(obs)
        if images:
            raise ValueError(f"a {KIND} policy reads no images, got {sorted(images)[:8]}")
        out: Tensor = self.encoder(obs)
        return out

    def field(self, features: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Velocity ``[B, horizon, act_dim]`` at chunk ``x`` and times ``t`` ``[B]``, given encoded obs."""
        inp = torch.cat([features, x.flatten(1), time_features(t.to(x.dtype))], dim=-1)
        out: Tensor = self.head(self.velocity(inp))
        return out.view(-1, self.horizon, self.act_dim)

    def loss(self, obs: Tensor, chunk: Tensor, generator: torch.Generator | None = None,
             mask: Tensor | None = None, images: Images | None = None) -> Tensor:
        """Scalar conditional flow-matching loss of demonstrated ``chunk`` ``[B, horizon, act_dim]``.

        ``mask`` ``[B, horizon]`` (optional, 1 = counted) leaves padded steps out of the mean.
        """
        self._check(obs)
        if chunk.shape[1:] != (self.horizon, self.act_dim) or chunk.shape[0] != obs.shape[0]:
            raise ValueError(f"chunk must be [{obs.shape[0]}, {self.horizon}, {self.act_dim}], got {list(chunk.shape)}")
        b = obs.shape[0]
        x0 = torch.randn(chunk.shape, dtype=chunk.dtype, device=chunk.device, generator=generator)
        t = torch.rand((b,), dtype=chunk.dtype, device=chunk.device, generator=generator)
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * chunk
        err = (self.field(self.features(obs, images), xt, t) - (chunk - x0)).pow(2).mean(-1)  # [B, horizon]
        if mask is None:
            return err.mean()
        m = mask.to(err.dtype)
        return (err * m).sum() / m.sum().clamp_min(1.0)

    @torch.no_grad()
    def sample(self, obs: Tensor, steps: int | None = None, generator: torch.Generator | None = None,
               deterministic: bool = False, images: Images | None = None) -> Tensor:
        """Chunk ``[B, horizon, act_dim]`` in [-1, 1] by ``steps`` Euler steps (default: the arch's)."""
        self._check(obs)
        n = self.steps if steps is None else int(steps)
        if n < 1:
            raise ValueError(f"sampling needs at least one integration step, got {steps}")
        shape = (obs.shape[0], self.horizon, self.act_dim)
        if deterministic:
            x = torch.zeros(shape, dtype=obs.dtype, device=obs.device)
        else:
            x = torch.randn(shape, dtype=obs.dtype, device=obs.device, generator=generator)
        features = self.features(obs, images)
        dt = 1.0 / n
        for i in range(n):
            t = torch.full((shape[0],), i * dt, dtype=obs.dtype, device=obs.device)
            x = x + dt * self.field(features, x, t)
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False, images: Images | None = None) -> Tensor:
        """The chunk's first action ``[B, act_dim]``: for callers that take one action per inference."""
        return self.sample(obs, deterministic=deterministic, images=images)[:, 0]

    def arch(self) -> dict[str, Any]:
        """JSON-able description that ``build_actor`` turns back into this module."""
        return arch(self.obs_dim, self.act_dim, self.hidden, self.horizon, self.steps)


def arch(obs_dim: int, act_dim: int, hidden: Sequence[int], horizon: int, steps: int) -> dict[str, Any]:
    """The arch dict ``build_actor`` turns into an untrained actor of this kind (what ``FlowActor.arch`` says)."""
    return {"kind": KIND, "version": VERSION, "obs_dim": int(obs_dim), "act_dim": int(act_dim),
            "hidden": [int(h) for h in hidden], "horizon": int(horizon), "steps": int(steps)}
