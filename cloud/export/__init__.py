"""Exports of the replay buffer to formats other tools open (MCAP for ROS 2 / Foxglove)."""
