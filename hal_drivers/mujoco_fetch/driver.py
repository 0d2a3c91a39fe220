"""FetchRobot: gymnasium-robotics ``Fetch{Reach,Push}[Dense]-v4`` as a fleetrl Robot.

gymnasium-robotics and mujoco are imported lazily, when the first robot is
built: MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` at import, so a
process without a camera robot is never forced into a GL backend, while a
camera robot defaults it to headless EGL before anything is imported.
Camera views (``camera``, ``cameras``) are drawn by ``cameras.ViewSet``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hal_drivers.base import FieldSpec, Robot, StepResult, UnitDescription, UnitKind
from hal_drivers.registry import register
from shared.errors import ConfigError

from .cameras import ViewSet
from .config import STATE_FIELDS, FetchConfig
from .twin import ActionPath, apply_to_model

DRIVER_NAME = "mujoco_fetch"


def _import_gym() -> Any:
    try:
        import gymnasium as gym
        import gymnasium_robotics
    except Exception as e:  # ImportError, or mujoco's RuntimeError on a bad MUJOCO_GL
        gl = os.environ.get("MUJOCO_GL")
        hint = f" (MUJOCO_GL={gl!r}; valid on Linux: egl, osmesa, glfw)" if gl else ""
        raise ConfigError(
            f"robot.driver: mujoco_fetch needs gymnasium-robotics and mujoco: {e}{hint}"
        ) from e
    gym.register_envs(gymnasium_robotics)
    return gym


def _f32(x: Any) -> np.ndarray:
    return np.array(x, dtype=np.float32, copy=True)


@register(DRIVER_NAME)
class FetchRobot(Robot):
    """The Fetch arm reaching for (or pushing a block to) a goal, in MuJoCo."""

    config_class = FetchConfig

    def __init__(self, config: FetchConfig, name: str = "arm"):
        self.config = config
        self.name = name
        self._env: Any = None
        self._views: ViewSet | None = None
        self._seeded = False
        views = config.views
        if views:
            # Must happen before mujoco is first imported in this process.
            os.environ.setdefault("MUJOCO_GL", "egl")
        gym = _import_gym()
        self._env = gym.make(config.env_id, max_episode_steps=config.max_episode_steps)
        self._path: ActionPath | None = None
        try:
            if config.dynamics.changed:
                apply_to_model(config.dynamics, self._env.unwrapped.model, config.task)
                space = self._env.action_space
                self._path = ActionPath(config.dynamics, int(np.prod(space.shape)), np.asarray(space.low, np.float32),
                                        np.asarray(space.high, np.float32))
            if views:
                self._start_renderer()
            self._description = self._build_description()
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------

    def _start_renderer(self) -> None:
        """Resolve the views and create the offscreen GL contexts now, so a missing backend
        or an unknown view fails at startup; then draw once to be sure."""
        cfg = self.config
        u = self._env.unwrapped
        where = "robot.options.cameras" if cfg.cameras else "robot.options.camera"
        default_cam = getattr(getattr(u, "mujoco_renderer", None), "default_cam_config", None)
        self._views = ViewSet(u.model, cfg.views, default_cam, where, antialias=cfg.camera_antialias)
        try:
            frames = self._views.draw(u.data)
        except Exception as e:
            raise ConfigError(f"{where}: the first camera frame failed with {type(e).__name__}: {e}") from None
        for v in cfg.views:
            if frames[v.name].shape != (v.size, v.size, 3):
                raise ConfigError(f"{where}: view {v.name!r} came out {frames[v.name].shape}, expected {(v.size, v.size, 3)}")

    def _build_description(self) -> UnitDescription:
        cfg = self.config
        spaces = self._env.observation_space.spaces
        obs = {k: FieldSpec(tuple(int(n) for n in spaces[k].shape)) for k in STATE_FIELDS}
        for v in cfg.views:
            obs[v.name] = FieldSpec(
                (v.size, v.size, 3), "uint8", codec=v.codec, quality=v.jpeg_quality if v.codec == "jpeg" else None
            )
        space = self._env.action_space
        dt = float(self._env.unwrapped.dt)  # 0.04 s: 20 substeps of 2 ms
        return UnitDescription(
            name=self.name,
            kind=UnitKind.ROBOT,
            driver=DRIVER_NAME,
            identity=str(cfg.identity),
            control_hz=round(1.0 / dt, 6),
            observation=obs,
            action_shape=tuple(int(n) for n in space.shape),
            action_low=tuple(float(x) for x in np.asarray(space.low).ravel()),
            action_high=tuple(float(x) for x in np.asarray(space.high).ravel()),
            extra={"task": cfg.task, "env_id": cfg.env_id,
                   **({"dynamics": cfg.dynamics.summary()} if cfg.dynamics.changed else {})},
        )

    # -- Robot -------------------------------------------------------------

    def describe(self) -> UnitDescription:
        return self._description

    def reset(self) -> dict[str, np.ndarray]:
        if self._seeded:
            raw, _ = self._env.reset()  # continue the RNG seeded by the first reset
        else:
            raw, _ = self._env.reset(seed=self.config.seed)
            self._seeded = True
        if self._path is not None:
            self._path.reset()
        return self._observation(raw)

    def step(self, action: np.ndarray) -> StepResult:
        a = self.clamp(action)
        if self._path is not None:  # a perturbed twin: what the arm gets is not quite what was asked
            a = self._path(a)
        raw, reward, terminated, truncated, info = self._env.step(a)
        return StepResult(
            observation=self._observation(raw),
            reward=float(reward),
            terminated=bool(terminated),
            truncated=bool(truncated),
            success=bool(info.get("is_success", False)),
            info={},
        )

    def hold_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Zero: the action moves the gripper by a delta (the mocap target, and the fingers' position
        actuators add it to where they are), so no delta keeps the arm where it is."""
        return np.zeros(self._description.action_shape, np.float32)

    def close(self) -> None:
        views, self._views = self._views, None
        if views is not None:
            views.close()
        env, self._env = self._env, None
        if env is not None:
            env.close()

    # -- helpers -----------------------------------------------------------

    def _observation(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        obs = {k: _f32(raw[k]) for k in STATE_FIELDS}
        if self._path is not None:
            self._path.sense(obs)
        if self._views is not None:
            obs.update(self._frames(self._views))
        return obs

    def _frames(self, views: ViewSet) -> dict[str, np.ndarray]:
        u = self._env.unwrapped
        # The goal marker (site "target0") is moved to the goal only by the render callback, which
        # gymnasium calls from env.render(); do the same before drawing, or the marker sits at its origin.
        u._render_callback()
        return views.draw(u.data)
