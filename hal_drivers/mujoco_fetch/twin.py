"""A perturbed Fetch arm: the "real" half of a sim/real twin.

RL-Co (sim-real co-training) needs a robot whose physics and sensing differ
from the simulator's the way a real arm does, while still running through the
real path (edge-agent, spool, link, ingest). ``[robot.options.dynamics]`` makes
one out of the same MuJoCo task: heavier or lighter block, other friction and
joint damping, a weaker or stronger actuator, actions that arrive late and
noisy, noisy state sensors, and other colours on camera. All defaults leave the
task unchanged, so a robot without the table is exactly the simulator.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.errors import ConfigError

NOISY_FIELDS = ("observation", "achieved_goal")  # what sensors measure; the goal is given, not measured
COLOUR_BODIES = ("table0", "object0", "floor0")


class Dynamics(BaseModel):
    """How this arm differs from the simulator (all defaults: not at all)."""

    model_config = ConfigDict(extra="forbid")

    object_mass_scale: float = Field(1.0, gt=0, le=100, description="push: the block's mass times this")
    friction_scale: float = Field(1.0, gt=0, le=100, description="every contact's sliding friction times this")
    damping_scale: float = Field(1.0, gt=0, le=100, description="every joint's damping times this")
    action_gain: float = Field(1.0, gt=0, le=10, description=(
        "actuator gain: the commanded motion times this (then clipped to the action range, as the arm would "
        "saturate); below 1 the arm moves less than asked"))
    action_latency_steps: int = Field(0, ge=0, le=50, description=(
        "control ticks between an action and its effect (the arm holds still, action 0, until the first arrives)"))
    action_noise: float = Field(0.0, ge=0, le=1, description="std of Gaussian noise on each action, in action units")
    obs_noise: float = Field(0.0, ge=0, le=1, description=(
        "std of Gaussian noise on the measured state fields (observation, achieved_goal), in metres"))
    colours: dict[str, tuple[float, float, float, float]] = Field(default_factory=dict, description=(
        f"camera colours: body name ({', '.join(COLOUR_BODIES)}) -> RGBA in [0, 1] for all its geoms"))
    seed: int = Field(0, description="seed of the action and sensor noise")

    @field_validator("colours")
    @classmethod
    def _colours(cls, v: dict[str, tuple[float, float, float, float]]) -> dict[str, tuple[float, float, float, float]]:
        for body, rgba in v.items():
            if body not in COLOUR_BODIES:
                raise ValueError(f"colours: {body!r} is not a body this arm can recolour ({', '.join(COLOUR_BODIES)})")
            if not all(0.0 <= c <= 1.0 for c in rgba):
                raise ValueError(f"colours.{body}: RGBA components must be in [0, 1], got {list(rgba)}")
        return v

    @property
    def changed(self) -> bool:
        """Whether this arm differs from the simulator at all (a noise seed without noise does not)."""
        return bool(self.summary())

    def summary(self) -> dict[str, Any]:
        """The fields that differ from the simulator (the robot's description carries them)."""
        out = {k: v for k, v in self.model_dump().items()
               if v != Dynamics.model_fields[k].get_default(call_default_factory=True)}
        if not (self.action_noise or self.obs_noise):
            out.pop("seed", None)
        return out


def _body_id(model: Any, name: str) -> int:
    import mujoco

    return int(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name))


def apply_to_model(dyn: Dynamics, model: Any, task: str) -> None:
    """Change the MuJoCo model in place (it keeps the change across resets: only the state is reset)."""
    if dyn.object_mass_scale != 1.0:
        if task != "push":
            raise ConfigError("robot.options.dynamics.object_mass_scale: the reach task has no block to weigh")
        obj = _body_id(model, "object0")
        model.body_mass[obj] *= dyn.object_mass_scale
        model.body_inertia[obj] *= dyn.object_mass_scale
    model.geom_friction[:, 0] *= dyn.friction_scale
    model.dof_damping[:] *= dyn.damping_scale
    for body, rgba in dyn.colours.items():
        bid = _body_id(model, body)
        if bid < 0:
            raise ConfigError(f"robot.options.dynamics.colours: this task's model has no body {body!r}")
        model.geom_rgba[model.geom_bodyid == bid] = np.asarray(rgba, dtype=model.geom_rgba.dtype)


class ActionPath:
    """Between the command and the arm: gain, noise and latency (what a real controller and bus add)."""

    def __init__(self, dyn: Dynamics, action_dim: int, low: np.ndarray, high: np.ndarray):
        self.dyn, self.low, self.high = dyn, low, high
        self._rng = np.random.default_rng(dyn.seed)
        self._queue: deque[np.ndarray] = deque()
        self._idle = np.zeros(action_dim, np.float32)

    def reset(self) -> None:
        """A new episode starts with nothing in flight."""
        self._queue.clear()

    def __call__(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, np.float32) * self.dyn.action_gain
        if self.dyn.action_noise:
            a = a + self._rng.normal(0.0, self.dyn.action_noise, a.shape).astype(np.float32)
        a = np.clip(a, self.low, self.high)
        self._queue.append(a)
        if len(self._queue) <= self.dyn.action_latency_steps:
            return self._idle
        return self._queue.popleft()

    def sense(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Sensor noise on the measured fields, in place."""
        if self.dyn.obs_noise:
            for k in NOISY_FIELDS:
                obs[k] = (obs[k] + self._rng.normal(0.0, self.dyn.obs_noise, obs[k].shape)).astype(np.float32)
        return obs
