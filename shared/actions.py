"""Actions between the policy's [-1, 1] and a robot's own units.

The policy always speaks [-1, 1] per dimension (tanh-squashed); a robot's
``action_low``/``action_high`` give its units. Robots and sim workers scale
the policy's output up (:meth:`ActionScale.to_robot`); the learner scales the
stored robot-unit actions back down (:meth:`ActionScale.normalise`) to train
on. One class, so both directions use the same bounds and the same formula.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_HALF_RANGE = 1e-8  # a dimension with low == high normalises to 0, not to inf


class ActionScale:
    """Affine map between [-1, 1] and ``[low, high]`` per action dimension."""

    def __init__(self, low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray) -> None:
        self.low = np.asarray(low, np.float32)
        self.high = np.asarray(high, np.float32)
        if self.low.shape != self.high.shape:
            raise ValueError(f"action bounds differ in shape: low {self.low.shape}, high {self.high.shape}")
        self.mid = (self.high + self.low) / 2
        self.half = np.maximum((self.high - self.low) / 2, MIN_HALF_RANGE)

    @classmethod
    def for_spec(cls, low: Sequence[float] | None, high: Sequence[float] | None, dim: int) -> "ActionScale":
        """Bounds as an episode spec carries them; missing ones mean the robot already speaks [-1, 1]."""
        return cls(low or [-1.0] * dim, high or [1.0] * dim)

    def to_robot(self, a: np.ndarray) -> np.ndarray:
        """[-1, 1] -> robot units (any leading batch shape)."""
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Robot units -> [-1, 1]: the inverse of :meth:`to_robot` (any leading batch shape)."""
        return (x - self.mid) / self.half

    def sample(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """Uniform random actions in robot units (exploration before any policy), float32."""
        size = self.low.shape if n is None else (n, *self.low.shape)
        return rng.uniform(self.low, self.high, size).astype(np.float32)
