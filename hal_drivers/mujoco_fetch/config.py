"""Options of the simulated Fetch arm (``[robot.options]`` in the agent config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hal_drivers.base import DriverConfig


class FetchConfig(DriverConfig):
    """A gymnasium-robotics Fetch task (MuJoCo) behind the Robot interface."""

    task: Literal["reach", "push"] = "reach"
    dense_reward: bool = True
    seed: int = 0
    max_episode_steps: int = Field(50, gt=0)
    # Stable across restarts; defaults to "sim-fetch-<task>-<seed>".
    identity: str | None = None
    camera: bool = False
    camera_size: int = Field(128, ge=16, le=1024)
    camera_codec: Literal["raw", "png", "jpeg"] = "raw"
    jpeg_quality: int = Field(90, ge=1, le=100)

    @model_validator(mode="after")
    def _default_identity(self) -> "FetchConfig":
        if self.identity is None:
            self.identity = f"sim-fetch-{self.task}-{self.seed}"
        return self

    @property
    def env_id(self) -> str:
        """The gymnasium-robotics environment this config selects."""
        return f"Fetch{self.task.capitalize()}{'Dense' if self.dense_reward else ''}-v4"
