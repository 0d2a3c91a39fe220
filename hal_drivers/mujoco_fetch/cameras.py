"""Named camera views of a MuJoCo scene, drawn offscreen with ``mujoco.Renderer``.

One renderer (one GL context) per image size, shared by the views of that size.
A GL context can be current on one thread only, and the robot is built on one
thread (startup) but driven from another (the control loop), with several
camera robots in one process: each draw makes its renderer's context current
(``Renderer.render`` does) and lets go of it afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import ConfigError

from .config import DEFAULT_VIEW, CameraView

GL_HINT = (
    "camera rendering needs a headless OpenGL backend: set MUJOCO_GL=egl or osmesa and install "
    "the Mesa libraries (Debian/Ubuntu: apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri "
    "libgl1 for egl, libosmesa6 for osmesa), or turn the cameras off (robot.options.camera = false, "
    "no robot.options.cameras)"
)
# gymnasium-robotics' Fetch render view (fetch_env.DEFAULT_CAMERA_CONFIG), used when the env has none.
_FETCH_CAM = {"distance": 2.5, "azimuth": 132.0, "elevation": -14.0, "lookat": (1.3, 0.75, 0.55)}
_MAX_GEOM = 1000  # as gymnasium's renderer: the default view is drawn pixel for pixel as env.render() draws it


def release_gl_context() -> None:
    """Let go of the EGL context current on this thread, so another thread can draw."""
    if os.environ.get("MUJOCO_GL") != "egl":
        return
    from mujoco import egl
    from OpenGL import EGL

    EGL.eglMakeCurrent(egl.EGL_DISPLAY, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)


def model_cameras(model: Any) -> list[str]:
    """Names of the cameras defined in a MuJoCo model."""
    import mujoco

    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) or f"#{i}" for i in range(model.ncam)]


@dataclass
class _Target:
    name: str
    size: int
    camera: Any  # a model camera id, or an MjvCamera (free camera) for the default view


class ViewSet:
    """Draws every configured view of one scene into uint8 [size, size, 3] frames."""

    def __init__(self, model: Any, views: list[CameraView], default_cam: dict[str, Any] | None, where: str,
                 antialias: bool = True):
        import mujoco

        self._renderers: dict[int, Any] = {}
        self._targets = [_Target(v.name, v.size, self._resolve(model, v, default_cam, where)) for v in views]
        sizes = sorted({v.size for v in views})
        if not sizes:
            return
        vis = model.vis.global_  # the offscreen framebuffer must hold the largest view
        vis.offwidth, vis.offheight = max(vis.offwidth, sizes[-1]), max(vis.offheight, sizes[-1])
        if not antialias:  # read when a renderer creates its framebuffer
            model.vis.quality.offsamples = 0
        try:
            for s in sizes:
                self._renderers[s] = mujoco.Renderer(model, s, s, max_geom=_MAX_GEOM)
        except Exception as e:  # no GL backend: glfw without a display, missing EGL/OSMesa libraries
            self.close()
            raise ConfigError(
                f"{where}: {GL_HINT}; MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} failed with {type(e).__name__}: {e}"
            ) from None
        finally:
            release_gl_context()

    @staticmethod
    def _resolve(model: Any, v: CameraView, default_cam: dict[str, Any] | None, where: str) -> Any:
        import mujoco

        if v.view == DEFAULT_VIEW:
            cam = mujoco.MjvCamera()
            mujoco.mjv_defaultFreeCamera(model, cam)
            for key, value in v.free_camera(dict(default_cam or _FETCH_CAM)).items():
                if key == "lookat":
                    cam.lookat[:] = np.asarray(value, dtype=np.float64)
                else:
                    setattr(cam, key, value)
            return cam
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, v.view)
        if cam_id < 0:
            known = ", ".join([DEFAULT_VIEW, *model_cameras(model)])
            raise ConfigError(f"{where}: camera {v.name!r} asks for view {v.view!r}, which this model does not have; "
                              f"views: {known}")
        return cam_id

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._targets]

    def draw(self, data: Any) -> dict[str, np.ndarray]:
        """One frame per view of the scene as ``data`` holds it now (fresh arrays, not views)."""
        frames: dict[str, np.ndarray] = {}
        try:
            for t in self._targets:
                r = self._renderers[t.size]
                r.update_scene(data, t.camera)
                frames[t.name] = r.render()  # makes this renderer's context current, returns a new array
        finally:
            release_gl_context()
        return frames

    def close(self) -> None:
        renderers, self._renderers = self._renderers, {}
        for r in renderers.values():
            r.close()
