"""The hardware-unit interface every driver implements.

A unit describes itself (kind, identity, spaces, rates, limits) so that the
agent can record its data, clamp its actions and tell the cloud what it is,
without knowing which device sits behind it.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from shared.schema import EpisodeSpec, FieldSpec


class UnitKind(str, enum.Enum):
    ROBOT = "robot"
    CAMERA = "camera"
    TELEOP = "teleop"
    ACCELERATOR = "accelerator"


@dataclass(frozen=True)
class UnitDescription:
    """What a unit says about itself; sent to the cloud in the hello."""

    name: str
    kind: UnitKind
    driver: str
    identity: str  # serial number or equivalent; stable across restarts
    control_hz: float = 0.0
    observation: dict[str, FieldSpec] = field(default_factory=dict)
    action_shape: tuple[int, ...] = ()
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "driver": self.driver,
            "identity": self.identity,
            "control_hz": self.control_hz,
            "observation": {k: v.to_dict() for k, v in self.observation.items()},
            "action_shape": list(self.action_shape),
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
            "extra": dict(self.extra),
        }

    def episode_spec(self) -> EpisodeSpec:
        """The recording schema this unit's episodes follow."""
        return EpisodeSpec(
            observation=dict(self.observation),
            action_dim=int(np.prod(self.action_shape)),
            action_low=tuple(self.action_low),
            action_high=tuple(self.action_high),
        )


@dataclass
class StepResult:
    observation: dict[str, np.ndarray]
    reward: float
    terminated: bool
    truncated: bool
    success: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class DriverConfig(BaseModel):
    """Base for per-driver options; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class HardwareUnit(abc.ABC):
    kind: ClassVar[UnitKind]
    config_class: ClassVar[type[DriverConfig]] = DriverConfig

    @abc.abstractmethod
    def describe(self) -> UnitDescription: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""


class Robot(HardwareUnit):
    """An episodic robot: reset, then step with actions inside its limits."""

    kind = UnitKind.ROBOT

    @abc.abstractmethod
    def reset(self) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> StepResult: ...

    def clamp(self, action: np.ndarray) -> np.ndarray:
        """Clip an action to the driver's safety limits; NaN becomes a no-op 0."""
        d = self.describe()
        a = np.nan_to_num(np.asarray(action, dtype=np.float32), nan=0.0)
        return np.clip(a, np.asarray(d.action_low, np.float32), np.asarray(d.action_high, np.float32))

    def hold_action(self, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        """The action that keeps the robot where it is, in robot units, for the observation ``obs``.

        Asked on the control thread only on a tick with no policy action ready (an action chunk late
        or lost, ``on_late = "hold"`` or ``"finish"``), so it must be cheap and never block: compute it
        from ``obs`` or state the driver already holds. A position-controlled robot returns the
        position it is at (it changes every tick); a velocity- or force-controlled one the zero
        action. None (the default): no driver-specific hold, the late tick repeats the last action."""
        return None
