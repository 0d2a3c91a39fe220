"""Random-shift augmentation of camera frames (DrQ / DrQ-v2), on the learner's device.

Each frame is replicate-padded by ``pad`` pixels and cropped back to its size at
a random integer offset. Replicate padding is clamping the source index, so the
shift is one gather with clamped row/column indices: no padded copy, exact for
uint8 (frames stay uint8 until the encoder converts them), and the same code on
CPU and GPU. Offsets come from the caller's generator, so a checkpointed
generator replays the same augmentation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Layout = Literal["NHWC", "NCHW"]


def shift_offsets(n: int, pad: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample (dy, dx) offsets in [-pad, pad], int64 ``[n, 2]``."""
    return torch.randint(0, 2 * pad + 1, (n, 2), device=device, generator=generator) - pad


def shift(images: Tensor, offsets: Tensor, layout: Layout = "NHWC") -> Tensor:
    """``images`` moved by ``offsets`` (``[N, 2]`` of (dy, dx)), edges replicated.

    ``out[b, i, j] = images[b, clamp(i + dy_b), clamp(j + dx_b)]``.
    """
    if images.dim() != 4:
        raise ValueError(f"random shift needs a batch of images [N, H, W, C] or [N, C, H, W], got {tuple(images.shape)}")
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    n = images.shape[0]
    if offsets.shape != (n, 2):
        raise ValueError(f"offsets must be [{n}, 2], got {tuple(offsets.shape)}")
    x = images if layout == "NHWC" else images.permute(0, 2, 3, 1)  # a view: gather in HWC order
    h, w = x.shape[1], x.shape[2]
    dev = x.device
    offsets = offsets.to(dev)
    rows = (torch.arange(h, device=dev).unsqueeze(0) + offsets[:, :1]).clamp_(0, h - 1)  # [N, H]
    cols = (torch.arange(w, device=dev).unsqueeze(0) + offsets[:, 1:]).clamp_(0, w - 1)  # [N, W]
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    out = x[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # [N, H, W, C]
    return out if layout == "NHWC" else out.permute(0, 3, 1, 2).contiguous()


def random_shift(
    images: Tensor, pad: int, generator: torch.Generator | None = None, layout: Layout = "NHWC"
) -> Tensor:
    """DrQ random shift of a batch (uint8 or float, NHWC or NCHW) by up to ``pad`` pixels.

    ``pad == 0`` returns ``images`` itself (augmentation off). The generator must
    live on the images' device.
    """
    if pad < 0:
        raise ValueError(f"augmentation pad must be 0 or more, got {pad}")
    if pad == 0:
        return images
    return shift(images, shift_offsets(images.shape[0], pad, images.device, generator), layout)
