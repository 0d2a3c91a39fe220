"""Simulated Fetch arm (gymnasium-robotics, MuJoCo); importing registers ``mujoco_fetch``."""

from .config import CameraView, FetchConfig
from .driver import FetchRobot

__all__ = ["CameraView", "FetchConfig", "FetchRobot"]
