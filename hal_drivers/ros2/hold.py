"""The action that holds a ROS 2 robot where it is (``Robot.hold_action``), per action topic.

Worked out once from the config, then each late tick only gathers numbers from the observation:

- ``JointTrajectory`` in ``positions`` mode: the measured positions of its joints, read from a
  ``JointState`` observation whose ``arrays`` include ``position`` (the target moves with the
  robot, so it changes every tick). With no such observation there is no safe hold to give.
- ``JointTrajectory`` in ``velocities`` mode and ``Twist``: zero (stop).
- ``Float64MultiArray``: unknown (the controller behind it may take positions, velocities or
  efforts), so no hold.

A robot with any topic lacking a hold gets none at all (None: the executor's own, repeating the
last action), rather than a half-held action.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ActionTopic, ObservationTopic

JOINT_STATE = "sensor_msgs/msg/JointState"


@dataclass(frozen=True)
class Source:
    """One action topic's hold: ``dim`` zeros, or (``field`` set) those entries of that observation."""

    dim: int
    field: str | None = None
    index: np.ndarray | None = None


def hold_sources(actions: list[ActionTopic], observations: dict[str, ObservationTopic]) -> list[Source] | None:
    """Where each action topic's hold comes from; None if one has no safe hold."""
    out: list[Source] = []
    for a in actions:
        if a.type == "geometry_msgs/msg/Twist" or a.type == "trajectory_msgs/msg/JointTrajectory" and a.mode == "velocities":
            out.append(Source(a.dim))
        elif a.type == "trajectory_msgs/msg/JointTrajectory":
            found = _measured_positions(a.joints, observations)
            if found is None:
                return None
            out.append(Source(a.dim, *found))
        else:
            return None
    return out


def _measured_positions(joints: list[str], observations: dict[str, ObservationTopic]) -> tuple[str, np.ndarray] | None:
    """The first JointState field that measures all ``joints``' positions: (field, their indices in it)."""
    for field, c in observations.items():
        if c.type != JOINT_STATE or "position" not in c.arrays or not set(joints) <= set(c.joints):
            continue
        base = c.arrays.index("position") * len(c.joints)  # the observation is the arrays, concatenated
        return field, np.array([base + c.joints.index(j) for j in joints], np.intp)
    return None


def hold_values(sources: list[Source], obs: dict[str, np.ndarray]) -> np.ndarray:
    """The hold action for this observation (robot units, the action's layout)."""
    parts = [np.zeros(s.dim, np.float32) if s.field is None else np.asarray(obs[s.field], np.float32)[s.index]
             for s in sources]
    return np.concatenate(parts).astype(np.float32)
