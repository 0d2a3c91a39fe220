"""Stage I with the camera policy (``sft.policy = "cnn"``): frames in the datasets, batches and the loss.

D_sim and D_real rows hold each camera's frame in ``obs.<camera>`` (the stored-row schema, frames
stored once: the frame a step saw is always on its own row, so SFT needs no ``next_obs`` frame).
:class:`ImageDemos` keeps them as uint8 arrays beside the flat state; a batch carries them under
``images.<camera>`` keys, so it stays a flat ``{name: Tensor}`` batch that ``cotrain`` and
``mixed_batch`` weigh and mix like any other. The loss is the Gaussian SFT loss (``action_nll``, the
NLL ``bc_loss`` uses) of the ``cnn_gaussian`` head over frames and state; the encoder is trained by
this loss (SFT has no critic to train it, unlike the learner's pixel SAC).

Only the state is standardised; publishing folds the statistics into the state columns of the
trunk's first layer (the image features come first in its input), so robots run the plain
``cnn_gaussian`` architecture on raw observations, as they run the state actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from cloud.learner.bc import action_nll
from shared.frames import decode_frames
from shared.policy import CNNActor
from shared.schema import OBS_PREFIX, FieldSpec

from .losses import Batch, Demos

IMAGE_KEY = "images."  # batch key prefix of a camera's frames


@dataclass(frozen=True)
class ImageDemos(Demos):
    """:class:`Demos` with each row's camera frames, uint8 [n, H, W, C] per camera."""

    images: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, frames in self.images.items():
            if frames.dtype != np.uint8 or frames.ndim != 4 or len(frames) != len(self.obs):
                raise ValueError(f"camera {name!r}: frames must be uint8 [{len(self.obs)}, H, W, C], "
                                 f"got {frames.dtype} {frames.shape}")

    def rows(self, idx: np.ndarray) -> dict[str, Tensor]:
        """The batch of rows ``idx``: state, action and every camera's frames."""
        out = super().rows(idx)
        out.update({IMAGE_KEY + name: torch.from_numpy(frames[idx]) for name, frames in self.images.items()})
        return out


def frame_spec(table: pa.Table, name: str) -> FieldSpec:
    """The camera field's spec from its column's metadata (shape, codec), as the robot described it."""
    col = OBS_PREFIX + name
    if col not in table.column_names:
        raise ValueError(f"the dataset has no frames of camera {name!r} (no column {col!r}); "
                         f"its cameras: {[c[len(OBS_PREFIX):] for c in table.column_names if c.startswith(OBS_PREFIX)]}")
    md = table.schema.field(col).metadata or {}
    shape = tuple(int(x) for x in md.get(b"shape", b"").split(b",") if x)
    codec = md.get(b"codec", b"raw").decode()
    return FieldSpec(shape, "uint8", codec)


def image_demos(table: pa.Table, demos: Demos, cameras: Sequence[str]) -> ImageDemos:
    """``demos`` (the table's state and actions) with each row's frame of every camera."""
    images = {}
    for name in cameras:
        spec = frame_spec(table, name)  # names a missing camera before the column is looked up
        images[name] = np.ascontiguousarray(decode_frames(table.column(OBS_PREFIX + name), spec)[0])
    return ImageDemos(demos.obs, demos.action, images)


def batch_images(batch: Batch) -> dict[str, Tensor]:
    return {k[len(IMAGE_KEY):]: v for k, v in batch.items() if k.startswith(IMAGE_KEY)}


def cnn_sft_loss(actor: CNNActor, batch: Batch) -> Tensor:
    """Mean NLL of the batch's actions under the camera actor (frames + state): the Gaussian SFT loss."""
    mean, log_std = actor(batch["obs"].to(torch.float32), images=batch_images(batch))
    return action_nll(mean, log_std, batch["action"].to(torch.float32))

