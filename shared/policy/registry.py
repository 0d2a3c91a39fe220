"""The registry of actor architectures: ``arch`` dict -> checked -> shapes or a network.

Robots receive weights plus the ``arch`` dict and rebuild the exact module with
:func:`build_actor`, so the two sides never drift on layer shapes. Every arch
is checked field by field first, with bounds that keep even a meta-device build
cheap; :func:`actor_shapes` then builds it on the meta device (no memory), so
the tensors on the wire are compared with what the arch implies before
anything real is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import cnn, cnn_flow, flow, mlp
from .cnn_flow import CNNFlowActor
from .flow import FlowActor
from .gaussian import GaussianActor

# Any registered actor: a Gaussian (one action per call, SAC's and BC's) or a flow head (action chunks;
# CNNFlowActor is one).
# Both have ``obs_dim``, ``act_dim``, ``act(obs, deterministic, images)`` and ``arch()``.
PolicyActor = GaussianActor | FlowActor

MAX_HIDDEN_LAYERS = 64  # a deeper MLP is not a policy this build trains; parameters are capped separately
MAX_WIDTH = 1 << 20  # any dimension past this is a network no robot's parameter cap admits
MAX_VIEWS = 8
IMAGE_SIDE = (8, 1024)
IMAGE_CHANNELS = (1, 3, 4)
MAX_CONV_LAYERS = 8
MAX_CONV_CHANNELS = 1024
MAX_LATENT = 4096
# Multiply-adds of one action's conv encoders. Parameters do not bound them (they grow with image size
# times channels squared): 2e10 is ~10x a ResNet-18 at 224x224, seconds per action on a robot CPU.
MAX_CONV_MACS = 20_000_000_000


class ArchTooLarge(ValueError):
    """A dimension no loadable policy has: a robot reports it as too large, like a parameter count."""


@dataclass(frozen=True)
class ArchKind:
    version: int
    check: Callable[[dict[str, Any]], None]  # raises ValueError naming the bad field
    build: Callable[[dict[str, Any]], PolicyActor]  # from a checked arch


def _int(arch: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int:
    value = arch.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"policy arch field {key!r} must be an int >= {lo}, got {str(value)[:80]}")
    if hi is not None and value > hi:
        raise ValueError(f"policy arch field {key!r} is {value}, at most {hi}")
    if value > MAX_WIDTH:
        raise ArchTooLarge(f"policy arch field {key!r} is {value}, more than any policy has ({MAX_WIDTH})")
    return value


def _int_list(arch: dict[str, Any], key: str, lo: int, max_len: int, hi: int = MAX_WIDTH, what: str = "") -> list[int]:
    value = arch.get(key)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in value
    ):
        raise ValueError(f"policy arch field {key!r} must be a list of ints >= {lo}, got {str(value)[:80]}")
    if len(value) > max_len:
        raise ValueError(f"policy arch has {len(value)} {what or key}, at most {max_len}")
    if any(v > MAX_WIDTH for v in value):
        raise ArchTooLarge(f"policy arch field {key!r} has a width past {MAX_WIDTH}: {str(value)[:80]}")
    if any(v > hi for v in value):
        raise ValueError(f"policy arch field {key!r} has values past {hi}: {str(value)[:80]}")
    return list(value)


def _check_mlp(arch: dict[str, Any]) -> None:
    _int(arch, "obs_dim", 1)
    _int(arch, "act_dim", 1)
    _int_list(arch, "hidden", 1, MAX_HIDDEN_LAYERS, what="hidden layers")


def _build_mlp(arch: dict[str, Any]) -> PolicyActor:
    return mlp.Actor(arch["obs_dim"], arch["act_dim"], arch["hidden"])


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and len(name) <= 200 and all(c.isalnum() or c in "_-" for c in name)


def image_views(arch: dict[str, Any]) -> list[cnn.View]:
    """The ``images`` field of a cnn arch, checked: 1..8 distinct named views of HxWxC."""
    views = arch.get("images")
    if not isinstance(views, (list, tuple)) or not 1 <= len(views) <= MAX_VIEWS:
        raise ValueError(f"policy arch field 'images' must list 1..{MAX_VIEWS} views [name, H, W, C], "
                         f"got {str(views)[:80]}")
    out: list[cnn.View] = []
    for v in views:
        if not (isinstance(v, (list, tuple)) and len(v) == 4 and _valid_name(v[0])
                and all(isinstance(x, int) and not isinstance(x, bool) for x in v[1:])):
            raise ValueError(f"policy arch image view must be [field name, H, W, C], got {str(v)[:80]}")
        name, h, w, c = v
        if not (IMAGE_SIDE[0] <= h <= IMAGE_SIDE[1] and IMAGE_SIDE[0] <= w <= IMAGE_SIDE[1]):
            raise ValueError(f"policy arch image {name!r} is {h}x{w}; sides must be in {IMAGE_SIDE[0]}..{IMAGE_SIDE[1]}")
        if c not in IMAGE_CHANNELS:
            raise ValueError(f"policy arch image {name!r} has {c} channels; expected one of {IMAGE_CHANNELS}")
        if name in (n for n, _ in out):
            raise ValueError(f"policy arch image {name!r} is listed twice")
        out.append((name, (h, w, c)))
    return out


def _check_cameras(arch: dict[str, Any]) -> list[cnn.View]:
    """The camera fields a pixel kind shares (images, channels, latent), checked; its views."""
    views = image_views(arch)
    channels = _int_list(arch, "channels", 1, MAX_CONV_LAYERS, hi=MAX_CONV_CHANNELS, what="conv layers")
    if not channels:
        raise ValueError("policy arch field 'channels' must name at least one conv layer")
    _int(arch, "latent", 1, MAX_LATENT)
    macs = 0
    for name, (h, w, c) in views:
        if min(cnn.conv_out(h, len(channels)), cnn.conv_out(w, len(channels))) < 1:
            raise ValueError(f"policy arch image {name!r} of {h}x{w} is too small for {len(channels)} conv layers")
        macs += conv_macs(h, w, c, channels)
    if macs > MAX_CONV_MACS:
        raise ArchTooLarge(f"policy arch's conv encoders take {macs:.3g} multiply-adds per action, "
                           f"more than {MAX_CONV_MACS:.3g}")
    return views


def _check_cnn(arch: dict[str, Any]) -> None:
    _int(arch, "obs_dim", 0)  # 0: a pure-pixel policy
    _int(arch, "act_dim", 1)
    _int_list(arch, "hidden", 1, MAX_HIDDEN_LAYERS, what="hidden layers")
    _check_cameras(arch)


def conv_macs(h: int, w: int, c: int, channels: list[int]) -> int:
    """Multiply-adds of one view's conv stack (3x3 kernels, the first with stride 2)."""
    total, c_in = 0, c
    for i, c_out in enumerate(channels):
        oh, ow = cnn.conv_out(h, i + 1), cnn.conv_out(w, i + 1)
        total += oh * ow * c_out * c_in * 9
        c_in = c_out
    return total


def _build_cnn(arch: dict[str, Any]) -> PolicyActor:
    return cnn.CNNActor(arch["obs_dim"], arch["act_dim"], arch["hidden"], image_views(arch),
                        arch["channels"], arch["latent"])


def _check_chunk_head(arch: dict[str, Any], min_obs_dim: int) -> None:
    """The fields of a flow head (state-only or over cameras)."""
    _int(arch, "obs_dim", min_obs_dim)
    act_dim = _int(arch, "act_dim", 1)
    _int_list(arch, "hidden", 1, MAX_HIDDEN_LAYERS, what="hidden layers")
    if not arch["hidden"]:
        raise ValueError(f"policy arch field 'hidden' of a {arch['kind']} policy must name at least one layer")
    horizon = _int(arch, "horizon", 1, flow.MAX_HORIZON)
    _int(arch, "steps", 1, flow.MAX_STEPS)
    if act_dim * horizon > MAX_WIDTH:
        raise ArchTooLarge(f"policy arch's chunk of {horizon} x {act_dim} actions is wider than any policy has "
                           f"({MAX_WIDTH})")


def _check_flow(arch: dict[str, Any]) -> None:
    _check_chunk_head(arch, 1)


def _build_flow(arch: dict[str, Any]) -> PolicyActor:
    return FlowActor(arch["obs_dim"], arch["act_dim"], arch["horizon"], arch["hidden"], arch["steps"])


def _check_cnn_flow(arch: dict[str, Any]) -> None:
    _check_chunk_head(arch, 0)  # 0: a pure-pixel policy
    _check_cameras(arch)


def _build_cnn_flow(arch: dict[str, Any]) -> PolicyActor:
    return CNNFlowActor(arch["obs_dim"], arch["act_dim"], image_views(arch), arch["horizon"], arch["hidden"],
                        arch["steps"], arch["channels"], arch["latent"])


KINDS: dict[str, ArchKind] = {
    mlp.KIND: ArchKind(mlp.VERSION, _check_mlp, _build_mlp),
    cnn.KIND: ArchKind(cnn.VERSION, _check_cnn, _build_cnn),
    flow.KIND: ArchKind(flow.VERSION, _check_flow, _build_flow),
    cnn_flow.KIND: ArchKind(cnn_flow.VERSION, _check_cnn_flow, _build_cnn_flow),
}
PIXEL_KINDS = frozenset({cnn.KIND, cnn_flow.KIND})  # kinds whose arch lists the camera views they read


def check_arch(arch: dict[str, Any]) -> ArchKind:
    """The registered kind ``arch`` names, after checking every field; ValueError names what is wrong."""
    if not isinstance(arch, dict):
        raise ValueError(f"policy arch must be a dict, got {type(arch).__name__}")
    kind = arch.get("kind")
    entry = KINDS.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise ValueError(f"unknown policy arch kind {repr(kind)[:80]} (this build knows {sorted(KINDS)})")
    version = arch.get("version")
    if version != entry.version or isinstance(version, bool):
        raise ValueError(f"unsupported policy arch version {repr(version)[:40]} for kind {kind!r} "
                         f"(this build supports version {entry.version})")
    entry.check(arch)
    return entry


def actor_images(arch: dict[str, Any]) -> list[cnn.View]:
    """The camera views (name, (H, W, C)) the actor ``arch`` reads, in order; [] for a state-only kind."""
    check_arch(arch)
    return image_views(arch) if arch["kind"] in PIXEL_KINDS else []


def actor_shapes(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the actor ``arch`` describes, built on the meta device (no memory
    taken), so weights from the wire are checked before a network is built."""
    entry = check_arch(arch)
    with torch.device("meta"):
        module = entry.build(arch)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def param_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def build_actor(arch: dict[str, Any], max_params: int | None = None) -> PolicyActor:
    """Rebuild the actor ``arch`` describes; raises ValueError on anything it can't honour,
    including more than ``max_params`` parameters (checked before any memory is taken)."""
    entry = check_arch(arch)
    if max_params is not None and (n := param_count(actor_shapes(arch))) > max_params:
        raise ValueError(f"policy arch has {n} parameters, more than the limit {max_params}")
    return entry.build(arch)


def build_gaussian(arch: dict[str, Any], max_params: int | None = None) -> GaussianActor:
    """:func:`build_actor` for trainers that need a Gaussian head (SAC's log-probs, BC's likelihood)."""
    actor = build_actor(arch, max_params)
    if not isinstance(actor, GaussianActor):
        raise ValueError(f"policy arch kind {arch.get('kind')!r} is not a Gaussian actor (this trainer needs "
                         f"mlp_gaussian or cnn_gaussian)")
    return actor
