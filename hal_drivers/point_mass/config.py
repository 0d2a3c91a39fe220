"""Options of the point mass (``[robot.options]`` in the agent config)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from hal_drivers.base import DriverConfig


class PointMassConfig(DriverConfig):
    """A point mass in ``dims`` dimensions pushed by a force per axis towards a random goal.

    Start and goal are drawn uniformly in the box ``[-arena, arena]`` per axis,
    from a generator seeded with ``seed``; the episode succeeds once the mass is
    within ``tolerance`` of the goal."""

    dims: int = Field(2, ge=1, le=32, description="dimensions of the space (observation fields and action size)")
    seed: int = Field(0, description="seeds the starts and goals of every episode")
    max_episode_steps: int = Field(50, gt=0, description="an episode is truncated after this many steps")
    arena: float = Field(1.0, gt=0, le=100, description="half-width of the box holding the mass and the goal (m)")
    tolerance: float = Field(0.1, gt=0, description="success: within this distance of the goal (m)")
    dt: float = Field(0.05, gt=0, le=1, description="simulated seconds per step (control_hz = 1 / dt)")
    terminate_on_success: bool = Field(True, description="end the episode (terminated) as soon as it succeeds")
    # Stable across restarts; defaults to "sim-point-mass-<dims>d-<seed>".
    identity: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("tolerance")
    @classmethod
    def _reachable(cls, v: float, info: ValidationInfo) -> float:
        arena = info.data.get("arena")  # absent when arena itself was refused
        if arena is not None and v >= arena:
            raise ValueError(f"must be smaller than arena ({arena} m), or every start would already succeed")
        return v

    @model_validator(mode="after")
    def _default_identity(self) -> "PointMassConfig":
        if self.identity is None:
            self.identity = f"sim-point-mass-{self.dims}d-{self.seed}"
        return self
