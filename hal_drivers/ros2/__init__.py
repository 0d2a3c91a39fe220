"""ROS 2 topics as a fleetrl robot; importing registers the ``ros2`` driver.

Needs the ``ros2`` extra (cyclonedds, rosbags); rclpy is used instead of
cyclonedds where a ROS 2 install is sourced.
"""

from .config import Ros2Config
from .driver import Ros2Robot, Ros2Unavailable

__all__ = ["Ros2Config", "Ros2Robot", "Ros2Unavailable"]
