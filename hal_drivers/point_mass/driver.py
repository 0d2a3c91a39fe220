"""PointMassRobot: a damped point mass reaching for a goal, simulated in numpy.

Each step applies the clamped action as a force (N) per axis for ``dt``
seconds (semi-implicit Euler), against viscous damping; walls at
``+-arena`` stop the mass. Top speed is ``MAX_FORCE / DAMPING`` = 2 m/s, reached
in a few steps (time constant ``MASS / DAMPING`` = 0.2 s): the farthest goal of
the default arena is about 30 steps away at 20 Hz, the mean one about 12.
"""

from __future__ import annotations

import numpy as np

from hal_drivers.base import FieldSpec, Robot, StepResult, UnitDescription, UnitKind
from hal_drivers.registry import register

from .config import PointMassConfig

DRIVER_NAME = "point_mass"
MASS = 0.1  # kg
DAMPING = 0.5  # N s/m: viscous friction
MAX_FORCE = 1.0  # N per axis: the action limits
FIELDS = ("position", "velocity", "goal")


@register(DRIVER_NAME)
class PointMassRobot(Robot):
    """A point mass in ``dims`` dimensions; observation ``position``, ``velocity``, ``goal`` (m, m/s, m)."""

    config_class = PointMassConfig

    def __init__(self, config: PointMassConfig, name: str = "arm"):
        self.config = config
        self.name = name
        self._rng = np.random.default_rng(config.seed)
        n = config.dims
        self._pos = np.zeros(n, np.float64)
        self._vel = np.zeros(n, np.float64)
        self._goal = np.zeros(n, np.float64)
        self._step = 0
        self._running = False  # between a reset and the end of its episode
        self._description = UnitDescription(
            name=name,
            kind=UnitKind.ROBOT,
            driver=DRIVER_NAME,
            identity=str(config.identity),
            control_hz=round(1.0 / config.dt, 6),
            observation={k: FieldSpec((n,)) for k in FIELDS},
            action_shape=(n,),
            action_low=(-MAX_FORCE,) * n,
            action_high=(MAX_FORCE,) * n,
            extra={
                "dims": n, "arena_m": config.arena, "tolerance_m": config.tolerance, "dt_s": config.dt,
                "mass_kg": MASS, "damping_ns_per_m": DAMPING,
                "units": {"position": "m", "velocity": "m/s", "goal": "m", "action": "N"},
            },
        )

    # -- Robot -------------------------------------------------------------

    def describe(self) -> UnitDescription:
        return self._description

    def reset(self) -> dict[str, np.ndarray]:
        cfg = self.config
        self._pos = self._rng.uniform(-cfg.arena, cfg.arena, cfg.dims)
        self._vel = np.zeros(cfg.dims)
        for _ in range(100):  # a goal not already reached (tolerance < arena makes this quick)
            self._goal = self._rng.uniform(-cfg.arena, cfg.arena, cfg.dims)
            if self._distance() > cfg.tolerance:
                break
        self._step = 0
        self._running = True
        return self._observation()

    def step(self, action: np.ndarray) -> StepResult:
        if not self._running:
            raise RuntimeError("point_mass: step() needs a reset() first (none yet, or the episode ended)")
        cfg = self.config
        if np.shape(action) != (cfg.dims,):
            raise ValueError(f"point_mass: action of shape {np.shape(action)}, expected ({cfg.dims},)")
        force = self.clamp(action).astype(np.float64)  # within the limits; NaN -> 0
        self._vel += (force - DAMPING * self._vel) / MASS * cfg.dt
        self._pos += self._vel * cfg.dt
        wall = np.abs(self._pos) > cfg.arena
        self._pos[wall] = np.clip(self._pos[wall], -cfg.arena, cfg.arena)
        self._vel[wall] = 0.0  # an inelastic wall
        self._step += 1
        distance = self._distance()
        success = distance <= cfg.tolerance
        terminated = success and cfg.terminate_on_success
        truncated = not terminated and self._step >= cfg.max_episode_steps
        self._running = not (terminated or truncated)
        return StepResult(
            observation=self._observation(),
            reward=-distance,
            terminated=terminated,
            truncated=truncated,
            success=success,
            info={"distance": distance},
        )

    def hold_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        # The action is a force: no force lets damping bring the mass to rest where it is.
        return np.zeros(self.config.dims, np.float32)

    # close(): nothing to release; the base class's no-op is enough.

    # -- helpers -----------------------------------------------------------

    def _distance(self) -> float:
        return float(np.linalg.norm(self._pos - self._goal))

    def _observation(self) -> dict[str, np.ndarray]:
        # Fresh float32 arrays every time: the recorder keeps them, so they must not change later.
        return {"position": self._pos.astype(np.float32), "velocity": self._vel.astype(np.float32),
                "goal": self._goal.astype(np.float32)}
