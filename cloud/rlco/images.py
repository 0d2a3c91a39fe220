"""Stage I with the camera policies (``sft.policy = "cnn"`` or ``"cnn_flow"``): frames in the datasets and
batches, and the cnn's loss.

D_sim and D_real rows hold each camera's frame in ``obs.<camera>`` (the stored-row schema, frames
stored once: the frame a step saw is always on its own row, so SFT needs no ``next_obs`` frame).
:class:`ImageDemos` keeps them as uint8 arrays beside the flat state; a batch carries them under
``images.<camera>`` keys, so it stays a flat ``{name: Tensor}`` batch that ``cotrain`` and
``mixed_batch`` weigh and mix like any other. The loss is the Gaussian SFT loss (``action_nll``, the
NLL ``bc_loss`` uses) of the ``cnn_gaussian`` head over frames and state; the encoder is trained by
this loss (SFT has no critic to train it, unlike the learner's pixel SAC).

``cnn_flow`` trains on action chunks (:class:`ImageChunkDemos`): each pair carries the frames of its
first observation (the one the chunk is planned from), under the same keys; its loss is the flow
learner's (``FlowSFT.loss``, which reads those keys).

Only the state is standardised; publishing folds the statistics into the state columns of the
first layer that reads it (the image features come first in its input: the trunk of
``cnn_gaussian``, the flow head's ``encoder`` of ``cnn_flow``), so robots run the plain
architecture on raw observations, as they run the state actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from cloud.buffer.source import IMAGES
from cloud.learner.bc import action_nll
from cloud.learner.chunks import order_rows, table_chunks
from shared.frames import decode_frames
from shared.policy import CNNActor, View
from shared.schema import OBS_PREFIX, FieldSpec

from .losses import Batch, ChunkDemos, Demos, Sampler

IMAGE_KEY = IMAGES  # batch key prefix of a camera's frames: the replay buffer's, which FlowSFT reads


def _check_frames(images: dict[str, np.ndarray], n: int) -> None:
    for name, frames in images.items():
        if frames.dtype != np.uint8 or frames.ndim != 4 or len(frames) != n:
            raise ValueError(f"camera {name!r}: frames must be uint8 [{n}, H, W, C], got {frames.dtype} {frames.shape}")


def _frame_rows(images: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, Tensor]:
    return {IMAGE_KEY + name: torch.from_numpy(frames[idx]) for name, frames in images.items()}


@dataclass(frozen=True)
class ImageDemos(Demos):
    """:class:`Demos` with each row's camera frames, uint8 [n, H, W, C] per camera."""

    images: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_frames(self.images, len(self.obs))

    def rows(self, idx: np.ndarray) -> dict[str, Tensor]:
        """The batch of rows ``idx``: state, action and every camera's frames."""
        return {**super().rows(idx), **_frame_rows(self.images, idx)}


@dataclass(frozen=True)
class ImageChunkDemos(ChunkDemos):
    """:class:`ChunkDemos` with the camera frames of each pair's first observation, uint8 [n, H, W, C]."""

    images: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_frames(self.images, len(self.obs))

    def rows(self, idx: np.ndarray) -> dict[str, Tensor]:
        """The batch of pairs ``idx``: state, action chunk, valid mask and every camera's frames."""
        return {**super().rows(idx), **_frame_rows(self.images, idx)}


def views(dataset: Sampler) -> list[View]:
    """The cameras a dataset's frames show, name and HxWxC (none for a state dataset)."""
    images: dict[str, np.ndarray] = getattr(dataset, "images", {})
    return [(n, (int(f.shape[1]), int(f.shape[2]), int(f.shape[3]))) for n, f in images.items()]


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


def _frames(table: pa.Table, cameras: Sequence[str]) -> dict[str, np.ndarray]:
    """Each row's frame of every camera, in the table's row order."""
    images = {}
    for name in cameras:
        spec = frame_spec(table, name)  # names a missing camera before the column is looked up
        images[name] = np.ascontiguousarray(decode_frames(table.column(OBS_PREFIX + name), spec)[0])
    return images


def image_demos(table: pa.Table, demos: Demos, cameras: Sequence[str]) -> ImageDemos:
    """``demos`` (the table's state and actions) with each row's frame of every camera."""
    return ImageDemos(demos.obs, demos.action, _frames(table, cameras))


def image_chunks(table: pa.Table, fields: Sequence[str], horizon: int, cameras: Sequence[str]) -> ImageChunkDemos:
    """The table's action-chunk pairs (``table_chunks``: one per row, rows ordered by episode and step) with
    the frames of each pair's first observation: the rows are ordered first, so pair i and frame i are row i."""
    ordered = order_rows(table)
    c = table_chunks(ordered, list(fields), horizon)  # ordering ordered rows (unique keys) keeps their order
    return ImageChunkDemos(c.obs, c.actions, c.valid, _frames(ordered, cameras))


def batch_images(batch: Batch) -> dict[str, Tensor]:
    return {k[len(IMAGE_KEY):]: v for k, v in batch.items() if k.startswith(IMAGE_KEY)}


def cnn_sft_loss(actor: CNNActor, batch: Batch) -> Tensor:
    """Mean NLL of the batch's actions under the camera actor (frames + state): the Gaussian SFT loss."""
    mean, log_std = actor(batch["obs"].to(torch.float32), images=batch_images(batch))
    return action_nll(mean, log_std, batch["action"].to(torch.float32))

