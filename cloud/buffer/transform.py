"""Transforms applied to a batch on sample, as TorchRL's replay buffers do.

Storage keeps actions as robots sent them (their own units); the policy
trains in [-1, 1], so the batch is normalised on the way out. Kept out of the
storage so the ring holds exactly what robots recorded.
"""

from __future__ import annotations

from typing import Callable

from shared.actions import ActionScale
from shared.schema import EpisodeSpec

from .source import Batch

Transform = Callable[[Batch], Batch]


class NormaliseAction:
    """Robot-unit actions -> [-1, 1] from the spec's bounds (none given: the robot already speaks [-1, 1])."""

    def __init__(self, spec: EpisodeSpec):
        self.scale = ActionScale.for_spec(spec.action_low, spec.action_high, spec.action_dim)

    def __call__(self, batch: Batch) -> Batch:
        batch["action"] = self.scale.normalise(batch["action"])
        if "action_chunk" in batch:  # a chunked policy's demo rows (cloud.buffer.writer.ChunkWriter)
            batch["action_chunk"] = self.scale.normalise(batch["action_chunk"])
        return batch
