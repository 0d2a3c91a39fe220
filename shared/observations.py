"""Observation dicts -> the flat float32 vector a policy reads.

A policy names the state fields it reads, in order (``arch["obs_fields"]``);
every place that feeds it (a robot's control tick, a sim worker's batch of
envs) builds the vector here, so the order and dtype never drift between them.
Image fields are not state and never appear in ``fields``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .schema import EpisodeSpec


def flatten(obs: Mapping[str, np.ndarray], fields: Sequence[str]) -> np.ndarray:
    """One observation as a 1-D float32 vector: each field raveled, in ``fields`` order."""
    return np.concatenate([np.asarray(obs[f], np.float32).ravel() for f in fields])


def flatten_batch(obs: Sequence[Mapping[str, np.ndarray]], fields: Sequence[str]) -> np.ndarray:
    """Several observations as an ``(n, dim)`` float32 array, rows in the order given."""
    return np.stack([flatten(o, fields) for o in obs])


def state_sizes(spec: EpisodeSpec) -> dict[str, int]:
    """Flat size of each state (non-image) field: what a policy may read from this robot."""
    return {name: fs.size for name, fs in spec.observation.items() if not fs.is_image}


ImageShape = tuple[int, int, int]  # H, W, C


def image_shapes(spec: EpisodeSpec) -> dict[str, ImageShape]:
    """HxWxC of each camera field: which images a policy may read from this robot."""
    return {name: (fs.shape[0], fs.shape[1], fs.shape[2]) for name, fs in spec.observation.items() if fs.is_image}
