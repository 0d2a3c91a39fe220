"""The robot-side daemon: control loop, recorder, spool, uplink, policy holder."""

__version__ = "0.1.0"
