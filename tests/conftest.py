import ctypes.util
import os

import pytest

# One OpenGL backend for the whole test process. MuJoCo fixes it at its first import, so a
# state-only robot built first would leave a later camera robot in the same process with
# none (the result would depend on test order); EGL wherever its library is installed.
if "MUJOCO_GL" not in os.environ and ctypes.util.find_library("EGL"):
    os.environ["MUJOCO_GL"] = "egl"


@pytest.fixture(autouse=True)
def _kill_leftover_processes():
    """A failed test must not leave an agent or learner running: an agent left
    redialling could reach a later test's learner on a reused port."""
    yield
    from harness import kill_all

    kill_all()
