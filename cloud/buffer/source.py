"""What a trainer samples from: the one protocol behind every replay source.

The learner's ``ReplayBuffer`` (one data dir), the cluster's ``ShardedBuffer``
(a batch drawn across shards) and the benchmark's image replay (rows decoded
from sealed segments) all implement it, so the trainer is typed against this
and nothing else. Sampling takes the caller's generator: the trainer
checkpoints its state, so a resumed run draws the batches it would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from shared.schema import EpisodeSpec

# obs, action (in [-1, 1]), reward, next_obs, terminated: float32, one row per draw; and for each
# camera field F the source serves, "images.F" and "next_images.F": uint8 [B, H, W, C].
Batch = dict[str, np.ndarray]
IMAGES = "images."
NEXT_IMAGES = "next_images."


@dataclass(frozen=True)
class Dims:
    """The shape of what a source yields, fixed once the run's spec is known."""

    obs_dim: int
    act_dim: int
    obs_fields: tuple[str, ...]
    images: tuple[tuple[str, tuple[int, int, int]], ...] = ()  # camera fields served, with their HxWxC

    @property
    def image_fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.images)


class Relabel(Protocol):
    """Rewrites rows' rewards as the buffer indexes them (memory only; segments keep what robots sent):
    the success classifier of ``learner.reward = "classifier"``. Tables hold whole chunks."""

    def check(self, spec: EpisodeSpec) -> None:
        """SchemaError if rows of ``spec`` cannot be scored (a camera it reads is missing)."""
        ...

    def __call__(self, table: pa.Table, spec: EpisodeSpec) -> pa.Table: ...


@runtime_checkable
class SampleSource(Protocol):
    @property
    def size(self) -> int:
        """Rows a sample can draw from now."""
        ...

    @property
    def added(self) -> int:
        """Rows ever added, also those since overwritten (the update-to-data ratio counts these)."""
        ...

    @property
    def dims(self) -> Dims | None:
        """None until the run's spec is known (no robot has linked yet)."""
        ...

    @property
    def rows(self) -> int:
        """Rows durably stored behind this source (for the checkpoint's record)."""
        ...

    @property
    def segment_count(self) -> int:
        """Sealed segments behind this source (for the checkpoint's record)."""
        ...

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """``batch_size`` rows drawn with ``rng``; only called while ``size`` > 0."""
        ...
