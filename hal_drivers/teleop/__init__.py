"""Teleop devices: keyboards, gamepads, SpaceMice, ROS 2 Joy/Twist, and a scripted operator."""

from .base import EVENTS, AxisMap, Teleop, TeleopCommand, TeleopOptions, apply_axes, check_axes

__all__ = ["EVENTS", "AxisMap", "Teleop", "TeleopCommand", "TeleopOptions", "apply_axes", "check_axes"]
