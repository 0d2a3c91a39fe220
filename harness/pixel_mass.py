"""A point mass that films itself, for benchmarks of camera plumbing at fleet rates.

``pixel_point_mass`` is the ``point_mass`` driver plus one top-down camera field, ``camera``
(``size`` x ``size`` x 3 uint8, raw): the arena's first two axes, the goal a green square and the
mass a red one, drawn in numpy in microseconds. A MuJoCo Fetch frame costs 2-5 ms of software
OpenGL plus ~3 ms of physics here, so eight Fetch robots at 50 Hz would need more than this
machine's two cores and a benchmark of them would measure the renderer, not the link, the batcher
or the policy. Not a product driver: it is registered only in a process that imports this module;

    python -m harness.pixel_mass run --config agent.toml [--drain-timeout S]

is ``edge-agent run`` (the real daemon, unchanged) with it registered, and :class:`PixelAgent`
starts that.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from hal_drivers.base import FieldSpec
from hal_drivers.point_mass import PointMassConfig, PointMassRobot
from hal_drivers.registry import register

from .procs import Agent

DRIVER_NAME = "pixel_point_mass"
CAMERA = "camera"
BACKGROUND, GOAL, MASS = (40, 40, 40), (40, 200, 60), (220, 40, 40)


class PixelPointMassConfig(PointMassConfig):
    """The point mass's options and the camera's side (pixels)."""

    camera_size: int = Field(32, ge=8, le=256, description="side of the square top-down camera frame")


@register(DRIVER_NAME)
class PixelPointMass(PointMassRobot):
    """``point_mass`` with a ``camera`` field showing where the mass and the goal are (axes 0 and 1)."""

    config_class = PixelPointMassConfig
    config: PixelPointMassConfig

    def __init__(self, config: PixelPointMassConfig, name: str = "arm"):
        super().__init__(config, name)
        s = config.camera_size
        d = self._description
        self._description = dataclasses.replace(
            d, driver=DRIVER_NAME, observation={**d.observation, CAMERA: FieldSpec((s, s, 3), "uint8", codec="raw")})

    def pixel(self, p: np.ndarray) -> tuple[int, int]:
        """Row and column of position ``p`` (axis 1 up, axis 0 right; one axis: the middle row)."""
        s, arena = self.config.camera_size, self.config.arena
        x = float(p[0])
        y = float(p[1]) if len(p) > 1 else 0.0
        col = int(np.clip((x + arena) / (2 * arena) * (s - 1) + 0.5, 0, s - 1))
        row = int(np.clip((arena - y) / (2 * arena) * (s - 1) + 0.5, 0, s - 1))
        return row, col

    def _frame(self) -> np.ndarray:
        s = self.config.camera_size
        img = np.empty((s, s, 3), np.uint8)
        img[:] = BACKGROUND
        for where, colour in ((self._goal, GOAL), (self._pos, MASS)):  # the mass drawn over the goal
            r, c = self.pixel(where)
            img[max(0, r - 1):r + 2, max(0, c - 1):c + 2] = colour
        return img

    def _observation(self) -> dict[str, np.ndarray]:
        return {**super()._observation(), CAMERA: self._frame()}


class PixelAgent(Agent):
    """:class:`harness.procs.Agent` running the pixel point mass (``driver_options`` as the point mass's,
    plus ``camera_size``)."""

    MODULE = ["harness.pixel_mass"]

    def __init__(self, root: Path, robot_id: str, urls: list[str], episodes: int, **kwargs: Any) -> None:
        super().__init__(root, robot_id, urls, episodes, driver=DRIVER_NAME, **kwargs)


if __name__ == "__main__":
    from edge_agent.cli import main

    main()
