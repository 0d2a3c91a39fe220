"""The teleop-device interface: what a human is asking for, read without waiting.

A device reads its hardware on its own thread (or is a pure function of the
observation, like the scripted operator) and keeps the latest state; the
control loop calls :meth:`Teleop.read` once per tick and must never block on
it. Actions are normalised to [-1, 1] per action dimension; the loop scales
them to the robot's limits and clamps them like a policy's.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hal_drivers.base import DriverConfig, HardwareUnit, UnitKind

EVENTS = ("success", "failure", "reset")  # episode buttons: end it as a success, as a failure, or cut it


@dataclass(frozen=True)
class TeleopCommand:
    """One tick's reading of the human.

    ``takeover``: the human drives this tick (the loop executes ``action``).
    ``events`` and ``reward`` are what was pressed since the last read (consumed by it).
    """

    action: np.ndarray  # float32 [act_dim], in [-1, 1]
    takeover: bool = False
    events: tuple[str, ...] = ()
    reward: float = 0.0  # per-step human reward label(s) since the last read, summed
    extra: dict[str, float] = field(default_factory=dict)


class AxisMap(BaseModel):
    """One input axis (or a pair of keys) driving one action dimension."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., min_length=1, description="device axis or key name (device-specific)")
    action: int = Field(..., ge=0, description="action dimension it drives")
    scale: float = Field(1.0, allow_inf_nan=False,
                         description="multiplier (negative inverts); the result is clipped to [-1, 1]")
    deadzone: float = Field(0.0, ge=0, lt=1, description="|value| below this reads as 0")


class TeleopOptions(DriverConfig):
    """Options every device shares; devices subclass it with their own."""

    axes: list[AxisMap] = Field(default_factory=list, description="axis -> action mapping (empty: the device's default)")
    takeover_button: str | None = Field(None, description="button/key that takes over (device default if unset)")
    success_button: str | None = Field(None, description="ends the episode as a success")
    failure_button: str | None = Field(None, description="ends the episode as a failure")
    reset_button: str | None = Field(None, description="cuts the episode (neither success nor failure)")
    reward_button: str | None = Field(None, description="adds reward_value to the current step's human reward")
    # finite: an inf or nan label would poison human_reward (and fail every read that carries one)
    reward_value: float = Field(1.0, allow_inf_nan=False, description="what one press of reward_button adds")


class Teleop(HardwareUnit):
    """A human's input device (or a scripted stand-in for one)."""

    kind = UnitKind.TELEOP
    config_class: ClassVar[type[DriverConfig]] = TeleopOptions

    @abc.abstractmethod
    def start(self, action_dim: int, takeover_mode: str = "hold") -> None:
        """Open the device and start reading it (raises ConfigError naming what is missing)."""

    @abc.abstractmethod
    def read(self, obs: Mapping[str, np.ndarray]) -> TeleopCommand:
        """The latest human command; never blocks (called once per control tick)."""


def apply_axes(axes: list[AxisMap], values: Mapping[str, float], action_dim: int) -> np.ndarray:
    """Device axis values -> a normalised action (unmapped dimensions 0)."""
    out = np.zeros(action_dim, np.float32)
    for ax in axes:
        if ax.action >= action_dim:
            continue  # checked at start by the device: see check_axes
        v = float(values.get(ax.source, 0.0))
        if abs(v) < ax.deadzone:
            v = 0.0
        out[ax.action] += v * ax.scale
    return np.clip(out, -1.0, 1.0)


def check_axes(axes: list[AxisMap], action_dim: int, where: str = "teleop.options.axes") -> None:
    from shared.errors import ConfigError

    for i, ax in enumerate(axes):
        if ax.action >= action_dim:
            raise ConfigError(f"{where}[{i}]: action {ax.action} does not exist; the robot has {action_dim} "
                              f"action dimension(s) (0..{action_dim - 1})")
