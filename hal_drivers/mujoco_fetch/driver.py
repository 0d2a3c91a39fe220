"""FetchRobot: gymnasium-robotics ``Fetch{Reach,Push}[Dense]-v4`` as a fleetrl Robot.

gymnasium-robotics and mujoco are imported lazily, when the first robot is
built: MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` at import, so a
process without a camera robot is never forced into a GL backend, while a
camera robot defaults it to headless EGL before anything is imported.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hal_drivers.base import FieldSpec, Robot, StepResult, UnitDescription, UnitKind
from hal_drivers.registry import register
from shared.errors import ConfigError

from .config import FetchConfig

DRIVER_NAME = "mujoco_fetch"
_GL_HINT = (
    "camera rendering needs a headless OpenGL backend: set MUJOCO_GL=egl or osmesa and install "
    "the Mesa libraries (Debian/Ubuntu: apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri "
    "libgl1 for egl, libosmesa6 for osmesa), or set robot.options.camera = false"
)


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


def _release_gl_context() -> None:
    """Let go of the EGL context after drawing: a context can be current on one thread
    only, and the robot is built on one thread (startup) but driven from another (the
    control loop); each draw makes it current again."""
    if os.environ.get("MUJOCO_GL") != "egl":
        return
    from mujoco import egl
    from OpenGL import EGL

    EGL.eglMakeCurrent(egl.EGL_DISPLAY, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)


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
        self._seeded = False
        if config.camera:
            # Must happen before mujoco is first imported in this process; harmless after
            # (gymnasium reads MUJOCO_GL again when it creates the rendering context).
            os.environ.setdefault("MUJOCO_GL", "egl")
        gym = _import_gym()
        kwargs: dict[str, Any] = {"max_episode_steps": config.max_episode_steps}
        if config.camera:
            kwargs.update(render_mode="rgb_array", width=config.camera_size, height=config.camera_size)
        self._env = gym.make(config.env_id, **kwargs)
        try:
            if config.camera:
                self._start_renderer()
            self._description = self._build_description()
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------

    def _start_renderer(self) -> None:
        """Create the offscreen GL context now, so a missing backend fails at startup."""
        renderer = self._env.unwrapped.mujoco_renderer
        try:
            # The bare renderer (no goal-marker callback, which needs a reset first).
            frame = renderer.render("rgb_array")
        except Exception as e:
            raise ConfigError(
                f"robot.options.camera: {_GL_HINT}; "
                f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} failed with {type(e).__name__}: {e}"
            ) from None
        finally:
            _release_gl_context()
        size = self.config.camera_size
        if frame is None or np.shape(frame) != (size, size, 3):
            raise ConfigError(
                f"robot.options.camera: renderer returned {np.shape(frame)}, expected {(size, size, 3)}"
            )

    def _build_description(self) -> UnitDescription:
        cfg = self.config
        spaces = self._env.observation_space.spaces
        obs = {
            k: FieldSpec(tuple(int(n) for n in spaces[k].shape))
            for k in ("observation", "achieved_goal", "desired_goal")
        }
        if cfg.camera:
            obs["camera"] = FieldSpec(
                (cfg.camera_size, cfg.camera_size, 3),
                "uint8",
                codec=cfg.camera_codec,
                quality=cfg.jpeg_quality if cfg.camera_codec == "jpeg" else None,
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
            extra={"task": cfg.task, "env_id": cfg.env_id},
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
        return self._observation(raw)

    def step(self, action: np.ndarray) -> StepResult:
        a = self.clamp(action)
        raw, reward, terminated, truncated, info = self._env.step(a)
        return StepResult(
            observation=self._observation(raw),
            reward=float(reward),
            terminated=bool(terminated),
            truncated=bool(truncated),
            success=bool(info.get("is_success", False)),
            info={},
        )

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            env.close()

    # -- helpers -----------------------------------------------------------

    def _observation(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        obs = {k: _f32(raw[k]) for k in ("observation", "achieved_goal", "desired_goal")}
        if self.config.camera:
            obs["camera"] = self._frame()
        return obs

    def _frame(self) -> np.ndarray:
        # gymnasium makes a viewer's GL context current only when creating it; with several
        # camera robots in one process, make this robot's context current before drawing.
        viewer = self._env.unwrapped.mujoco_renderer._viewers.get("rgb_array")
        if viewer is not None:
            viewer.make_context_current()
        try:
            frame = self._env.render()
        finally:
            _release_gl_context()
        return np.array(frame, dtype=np.uint8, copy=True)
