"""Simulated Fetch arm (gymnasium-robotics, MuJoCo); importing registers ``mujoco_fetch``."""

from .config import FetchConfig
from .driver import FetchRobot

__all__ = ["FetchConfig", "FetchRobot"]
