"""A point mass that must reach a goal, in pure numpy; importing registers ``point_mass``.

The smallest complete driver: a worked example for driver authors
(docs/drivers.md) and a second embodiment, unlike the Fetch arm in its
observation and action sizes, that SAC learns in seconds.
"""

from .config import PointMassConfig
from .driver import PointMassRobot

__all__ = ["PointMassConfig", "PointMassRobot"]
