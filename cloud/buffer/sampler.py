"""Which rows a batch draws: the sampler part of the buffer (TorchRL's ``Sampler``)."""

from __future__ import annotations

import numpy as np


class UniformSampler:
    """Rows uniformly with replacement from the ``size`` rows storage holds.

    Seedable through the generator it is given: the same generator state draws
    the same rows, which is what a resumed trainer relies on.
    """

    def indices(self, size: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        if size <= 0:
            raise ValueError("cannot sample from an empty buffer")
        return rng.integers(0, size, batch_size)
