"""Options of the simulated Fetch arm (``[robot.options]`` in the agent config)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hal_drivers.base import DriverConfig

from .twin import Dynamics

STATE_FIELDS = ("observation", "achieved_goal", "desired_goal")
DEFAULT_VIEW = "default"


class CameraView(BaseModel):
    """One camera image in every observation: its own field, size and codec.

    ``view`` is ``"default"`` (the gymnasium env's own render view: a free camera
    looking at the table from the front-left, 2.5 m away) or the name of a camera
    in the MuJoCo model (Fetch: ``external_camera_0``, ``head_camera_rgb``,
    ``gripper_camera_rgb``). The default view's free camera can be moved
    (``lookat``, ``distance``, ``azimuth``, ``elevation``, as MuJoCo's mjvCamera
    has them): from 2.5 m the 2 cm goal sphere is 1-2 pixels wide at 64x64."""

    model_config = ConfigDict(extra="forbid")
    FREE_KEYS: ClassVar[tuple[str, ...]] = ("lookat", "distance", "azimuth", "elevation")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", description="observation field of this view")
    view: str = Field(DEFAULT_VIEW, min_length=1)
    size: int = Field(128, ge=16, le=1024, description="square image, size x size pixels")
    codec: Literal["raw", "png", "jpeg"] = "raw"
    jpeg_quality: int = Field(90, ge=1, le=100)
    lookat: tuple[float, float, float] | None = Field(None, description="default view only: point looked at (m)")
    distance: float | None = Field(None, gt=0, le=20, description="default view only: metres from lookat")
    azimuth: float | None = Field(None, ge=-360, le=360, description="default view only: degrees about +z")
    elevation: float | None = Field(None, ge=-90, le=90, description="default view only: degrees, negative looks down")

    @model_validator(mode="after")
    def _free_camera_only(self) -> "CameraView":
        moved = [k for k in self.FREE_KEYS if getattr(self, k) is not None]
        if moved and self.view != DEFAULT_VIEW:
            raise ValueError(f"cameras: {self.name!r} sets {', '.join(moved)}, which move the default view's free "
                             f"camera only; model camera {self.view!r} is fixed in the model")
        return self

    def free_camera(self, base: dict[str, Any]) -> dict[str, Any]:
        """The default view's camera settings with this view's changes applied."""
        return {**base, **{k: getattr(self, k) for k in self.FREE_KEYS if getattr(self, k) is not None}}


class FetchConfig(DriverConfig):
    """A gymnasium-robotics Fetch task (MuJoCo) behind the Robot interface."""

    task: Literal["reach", "push"] = "reach"
    dense_reward: bool = True
    seed: int = 0
    max_episode_steps: int = Field(50, gt=0)
    # Stable across restarts; defaults to "sim-fetch-<task>-<seed>".
    identity: str | None = None
    # The one-camera shorthand: a field named "camera" showing the default view.
    camera: bool = False
    camera_size: int = Field(128, ge=16, le=1024)
    camera_codec: Literal["raw", "png", "jpeg"] = "raw"
    jpeg_quality: int = Field(90, ge=1, le=100)
    # Any number of named views, each its own field (added after "camera" when both are set).
    cameras: list[CameraView] = Field(default_factory=list)
    # Multisample anti-aliasing of every view (the model's 4 samples). Off draws a frame about 3x
    # faster with software OpenGL (Mesa llvmpipe: ~2 ms instead of ~7 ms), with jagged edges.
    camera_antialias: bool = True
    # The "real" half of a sim/real twin: physics, actuation and sensing unlike the simulator's (defaults: none).
    dynamics: Dynamics = Field(default_factory=Dynamics)

    @model_validator(mode="after")
    def _check(self) -> "FetchConfig":
        if self.identity is None:
            self.identity = f"sim-fetch-{self.task}-{self.seed}"
        seen: set[str] = set()
        for v in self.views:
            if v.name in STATE_FIELDS:
                raise ValueError(f"cameras: {v.name!r} is a state field of the Fetch arm; pick another camera name")
            if v.name in seen:
                hint = " (camera = true already adds a view named 'camera')" if v.name == "camera" and self.camera else ""
                raise ValueError(f"cameras: the name {v.name!r} is used twice{hint}")
            seen.add(v.name)
        return self

    @property
    def views(self) -> list[CameraView]:
        """Every camera view, in field order: the ``camera`` shorthand first."""
        legacy = [CameraView(name="camera", view=DEFAULT_VIEW, size=self.camera_size, codec=self.camera_codec,
                             jpeg_quality=self.jpeg_quality)] if self.camera else []
        return legacy + list(self.cameras)

    @property
    def env_id(self) -> str:
        """The gymnasium-robotics environment this config selects."""
        return f"Fetch{self.task.capitalize()}{'Dense' if self.dense_reward else ''}-v4"
