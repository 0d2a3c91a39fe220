"""``cnn_flow`` v1: the flow-matching chunk head of :mod:`.flow` conditioned on camera views.

The views go through the same per-view conv stacks as ``cnn_gaussian``
(:class:`~.cnn.ImageEncoder`); their features, in arch order, are joined with
the state vector (which may be empty) and read by the flow head's encoder MLP.
Frames are encoded once per chunk, not once per integration step, so the
Euler steps cost what they cost for the state-only head. Camera robots get
action chunks, and with them the round trip hidden behind the chunk, whether
the policy runs on the robot or is served from the cloud.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from . import flow
from .cnn import DEFAULT_CHANNELS, DEFAULT_LATENT, ImageEncoder, View, camera_arch
from .flow import FlowActor
from .gaussian import Images

KIND = "cnn_flow"
VERSION = 1


class CNNFlowActor(FlowActor):
    """Flow-matching policy over camera views and the state vector (``obs_dim`` may be 0)."""

    def __init__(self, obs_dim: int, act_dim: int, views: Sequence[View], horizon: int = 10,
                 hidden: Sequence[int] = (256, 256), steps: int = 10, channels: Sequence[int] = DEFAULT_CHANNELS,
                 latent: int = DEFAULT_LATENT) -> None:
        cameras = ImageEncoder(views, channels, latent)
        super().__init__(obs_dim, act_dim, horizon, hidden, steps, image_features=cameras.feature_dim)
        self.cameras = cameras

    def features(self, obs: Tensor, images: Images | None = None) -> Tensor:
        self._check(obs)
        if not images:
            raise ValueError(f"a {KIND} policy needs images {[n for n, _ in self.cameras.views]}")
        x = self.cameras(images)
        out: Tensor = self.encoder(torch.cat([x, obs], dim=-1) if self.obs_dim else x)
        return out

    def arch(self) -> dict[str, Any]:
        return arch(self.obs_dim, self.act_dim, self.hidden, self.horizon, self.steps, self.cameras.views,
                    self.cameras.channels, self.cameras.latent)


def arch(obs_dim: int, act_dim: int, hidden: Sequence[int], horizon: int, steps: int, views: Sequence[View],
         channels: Sequence[int] = DEFAULT_CHANNELS, latent: int = DEFAULT_LATENT) -> dict[str, Any]:
    """The arch dict ``build_actor`` turns into an untrained actor of this kind (what ``CNNFlowActor.arch`` says)."""
    return {**flow.arch(obs_dim, act_dim, hidden, horizon, steps), "kind": KIND, "version": VERSION,
            **camera_arch(views, channels, latent)}
