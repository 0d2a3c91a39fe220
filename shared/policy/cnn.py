"""``cnn_gaussian`` v1: camera views plus proprioception, DrQ-v2/SERL style.

Each view has its own conv stack (3x3 kernels, no padding, the first with
stride 2, ReLU) projected by Linear -> LayerNorm -> tanh to ``latent``
features; the views' features, in arch order, are joined with the state
vector and read by an MLP trunk and a squashed-Gaussian head. Frames arrive as
uint8 ``[B, H, W, C]`` and are converted on the module's own device, so only
bytes cross a host-to-device copy. The learner shares ``encoder`` with its
critic and feeds the actor detached features (:meth:`CNNActor.sample_features`),
so the encoder is trained by the critic loss alone.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .gaussian import GaussianActor, Images, mlp, split_head, squashed_sample

KIND = "cnn_gaussian"
VERSION = 1
DEFAULT_CHANNELS = (32, 32, 32, 32)
DEFAULT_LATENT = 64

View = tuple[str, tuple[int, int, int]]  # field name, (H, W, C)


def conv_out(size: int, layers: int) -> int:
    """Height or width after ``layers`` valid 3x3 convs, the first with stride 2; < 1 if it vanishes."""
    return (size - 3) // 2 + 1 - 2 * (layers - 1)


class _ViewStack(nn.Module):
    """One view's conv stack and its Linear -> LayerNorm -> tanh projection."""

    def __init__(self, hwc: tuple[int, int, int], channels: Sequence[int], latent: int) -> None:
        super().__init__()
        h, w, c = hwc
        layers: list[nn.Module] = []
        last = c
        for i, ch in enumerate(channels):
            layers += [nn.Conv2d(last, ch, kernel_size=3, stride=2 if i == 0 else 1), nn.ReLU()]
            last = ch
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(last * conv_out(h, len(channels)) * conv_out(w, len(channels)), latent)
        self.norm = nn.LayerNorm(latent)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.norm(self.proj(self.convs(x).flatten(1))))


class ImageEncoder(nn.Module):
    """Camera frames -> features in [-1, 1]: ``latent`` per view, concatenated in view order."""

    def __init__(self, views: Sequence[View], channels: Sequence[int] = DEFAULT_CHANNELS,
                 latent: int = DEFAULT_LATENT) -> None:
        super().__init__()
        self.views: list[View] = [(str(n), (int(s[0]), int(s[1]), int(s[2]))) for n, s in views]
        self.channels = [int(c) for c in channels]
        self.latent = int(latent)
        if not self.views or not self.channels:
            raise ValueError("an image encoder needs at least one view and one conv layer")
        for name, (h, w, _) in self.views:
            if min(conv_out(h, len(self.channels)), conv_out(w, len(self.channels))) < 1:
                raise ValueError(f"image {name!r} of {h}x{w} is too small for {len(self.channels)} conv layers")
        # A list, not a dict keyed by field name: tensor names never depend on what a camera is called.
        self.stacks = nn.ModuleList(_ViewStack(hwc, self.channels, self.latent) for _, hwc in self.views)
        self.feature_dim = self.latent * len(self.views)

    def forward(self, images: Mapping[str, Tensor]) -> Tensor:
        """``[B, feature_dim]`` features from uint8 ``[B, H, W, C]`` frames (float in 0..255 is accepted
        too, e.g. after an augmentation); fields the encoder does not read are ignored."""
        weight = next(self.parameters())  # the device and dtype frames are converted to
        feats = []
        for (name, hwc), stack in zip(self.views, self.stacks):
            x = images.get(name)
            if x is None:
                raise ValueError(f"the policy reads image {name!r}, which the input lacks (has {sorted(images)[:8]})")
            if x.dim() != 4 or tuple(x.shape[1:]) != hwc:
                raise ValueError(f"image {name!r} must be [B, {hwc[0]}, {hwc[1]}, {hwc[2]}], got {list(x.shape)}")
            x = x.to(weight.device, non_blocking=True).permute(0, 3, 1, 2).to(weight.dtype)
            feats.append(stack(x / 255.0 - 0.5))
        return torch.cat(feats, dim=-1)


class CNNActor(GaussianActor):
    """Squashed-Gaussian actor over camera views and the state vector (``obs_dim`` may be 0)."""

    encoder: ImageEncoder

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], views: Sequence[View],
                 channels: Sequence[int] = DEFAULT_CHANNELS, latent: int = DEFAULT_LATENT) -> None:
        super().__init__()
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.hidden = [int(h) for h in hidden]
        self.encoder = ImageEncoder(views, channels, latent)
        self.trunk, last = mlp(self.encoder.feature_dim + self.obs_dim, self.hidden)
        self.head = nn.Linear(last, 2 * self.act_dim)

    def forward(self, obs: Tensor, images: Images | None = None) -> tuple[Tensor, Tensor]:
        if images is None:
            raise ValueError(f"a {KIND} policy needs images {[n for n, _ in self.encoder.views]}")
        return self.forward_features(self.encoder(images), obs)

    def forward_features(self, features: Tensor, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) from encoder features (possibly detached) and the state vector."""
        x = torch.cat([features, obs], dim=-1) if self.obs_dim else features
        return split_head(self.head(self.trunk(x)))

    def sample_features(self, features: Tensor, obs: Tensor,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised action and log-prob from given features: SAC's actor loss passes them
        detached, so its gradient reaches the trunk and head but never the encoder."""
        mean, log_std = self.forward_features(features, obs)
        return squashed_sample(mean, log_std, generator)

    def arch(self) -> dict[str, Any]:
        e = self.encoder
        return self._arch(KIND, VERSION, **camera_arch(e.views, e.channels, e.latent))


def camera_arch(views: Sequence[View], channels: Sequence[int], latent: int) -> dict[str, Any]:
    """The arch fields of the per-view conv encoders (``images``, ``channels``, ``latent``): every pixel kind's."""
    return {"images": [[str(n), *(int(x) for x in hwc)] for n, hwc in views],
            "channels": [int(c) for c in channels], "latent": int(latent)}


def arch(obs_dim: int, act_dim: int, hidden: Sequence[int], views: Sequence[View], channels: Sequence[int],
         latent: int) -> dict[str, Any]:
    """The arch dict ``build_gaussian`` turns into an untrained actor of this kind (what ``CNNActor.arch`` says)."""
    return {"kind": KIND, "version": VERSION, "obs_dim": int(obs_dim), "act_dim": int(act_dim),
            "hidden": [int(h) for h in hidden], **camera_arch(views, channels, latent)}
