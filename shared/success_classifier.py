"""``success_classifier`` v1: camera frames -> probability that the task is done (HIL-SERL's reward).

The learner trains it (``cloud.learner.classifier``) and ships it with each
policy, so robots rebuild it from the same arch dict as the actor: the arch is
checked field by field with the actor's bounds and its tensor shapes computed
on the meta device before anything is allocated. The network is the actor's
conv encoder (:class:`shared.policy.ImageEncoder`, one stack per camera)
followed by an MLP and one logit.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from torch import Tensor, nn

from .policy import ArchTooLarge, ImageEncoder, View
from .policy.gaussian import mlp
from .policy.cnn import conv_out
from .policy.registry import (
    MAX_CONV_CHANNELS,
    MAX_CONV_LAYERS,
    MAX_CONV_MACS,
    MAX_HIDDEN_LAYERS,
    MAX_LATENT,
    MAX_WIDTH,
    _int,
    _int_list,
    conv_macs,
    image_views,
)

KIND = "success_classifier"
VERSION = 1
PREFIX = "classifier."  # its tensors' names inside a published policy blob
DEFAULT_CHANNELS = (16, 16, 16, 16)
DEFAULT_LATENT = 64
DEFAULT_HIDDEN = (256,)
T = TypeVar("T")


class SuccessClassifier(nn.Module):
    """A binary success classifier over one or more camera views (uint8 ``[B, H, W, C]`` each)."""

    def __init__(self, views: Sequence[View], channels: Sequence[int] = DEFAULT_CHANNELS,
                 latent: int = DEFAULT_LATENT, hidden: Sequence[int] = DEFAULT_HIDDEN) -> None:
        super().__init__()
        self.encoder = ImageEncoder(views, channels, latent)
        self.hidden = [int(h) for h in hidden]
        self.trunk, last = mlp(self.encoder.feature_dim, self.hidden)
        self.head = nn.Linear(last, 1)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.encoder.views)

    def forward(self, images: Mapping[str, Tensor]) -> Tensor:
        """Logits ``[B]`` (success when > 0)."""
        logits: Tensor = self.head(self.trunk(self.encoder(images)))
        return logits.squeeze(-1)

    @torch.no_grad()
    def probability(self, images: Mapping[str, Tensor]) -> Tensor:
        """Success probabilities ``[B]`` in [0, 1]."""
        return torch.sigmoid(self.forward(images))

    def arch(self) -> dict[str, Any]:
        enc = self.encoder
        return {"kind": KIND, "version": VERSION, "images": [[n, h, w, c] for n, (h, w, c) in enc.views],
                "channels": list(enc.channels), "latent": enc.latent, "hidden": list(self.hidden)}


def _as_classifier(check: Callable[..., T], *args: Any) -> T:
    """One of the actor's arch checks (same bounds), its message naming the classifier's arch."""
    try:
        return check(*args)
    except ArchTooLarge as e:
        raise ArchTooLarge(str(e).replace("policy arch", "classifier arch")) from None
    except ValueError as e:
        raise ValueError(str(e).replace("policy arch", "classifier arch")) from None


def check_arch(arch: Any) -> list[View]:
    """The views a classifier ``arch`` reads, after checking every field; ValueError names what is wrong
    (:class:`ArchTooLarge` for sizes no loadable classifier has)."""
    if not isinstance(arch, dict):
        raise ValueError(f"classifier arch must be a map, got {type(arch).__name__}")
    if arch.get("kind") != KIND:
        raise ValueError(f"classifier arch kind must be {KIND!r}, got {repr(arch.get('kind'))[:80]}")
    version = arch.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ValueError(f"unsupported classifier arch version {repr(version)[:40]} (this build supports {VERSION})")
    views = _as_classifier(image_views, arch)
    channels = _as_classifier(_int_list, arch, "channels", 1, MAX_CONV_LAYERS, MAX_CONV_CHANNELS, "conv layers")
    hidden = _as_classifier(_int_list, arch, "hidden", 1, MAX_HIDDEN_LAYERS, MAX_WIDTH, "hidden layers")
    if not channels or not hidden:
        raise ValueError(f"classifier arch field {'channels' if not channels else 'hidden'!r} must have at least "
                         "one entry")
    _as_classifier(_int, arch, "latent", 1, MAX_LATENT)
    macs = 0
    for name, (h, w, c) in views:
        if min(conv_out(h, len(channels)), conv_out(w, len(channels))) < 1:
            raise ValueError(f"classifier arch image {name!r} of {h}x{w} is too small for {len(channels)} conv layers")
        macs += conv_macs(h, w, c, channels)
    if macs > MAX_CONV_MACS:
        raise ArchTooLarge(f"classifier's conv encoders take {macs:.3g} multiply-adds per frame, more than "
                           f"{MAX_CONV_MACS:.3g}")
    return views


def build(arch: dict[str, Any]) -> SuccessClassifier:
    """The classifier ``arch`` describes (checked first)."""
    views = check_arch(arch)
    return SuccessClassifier(views, arch["channels"], arch["latent"], arch["hidden"])


def shapes(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the classifier ``arch`` describes, built on the meta device (no memory)."""
    check_arch(arch)
    with torch.device("meta"):
        module = build(arch)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
