"""Options of the ROS 2 topic driver (``[robot.options]`` with ``driver = "ros2"``).

A robot is described by a topic mapping: which topics make up the
observation, which topics take the action, and how fresh data must be at
each control tick. See docs/ros2.md and examples/ros2_arm.toml.
"""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hal_drivers.base import DriverConfig
from shared.errors import ConfigError

from . import types

OBS_TYPES = (
    "sensor_msgs/msg/JointState", "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
    "geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/WrenchStamped", "std_msgs/msg/Float64MultiArray",
)
ACTION_TYPES = ("trajectory_msgs/msg/JointTrajectory", "geometry_msgs/msg/Twist", "std_msgs/msg/Float64MultiArray")
TWIST_AXES = ("linear.x", "linear.y", "linear.z", "angular.x", "angular.y", "angular.z")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QosConfig(_Strict):
    """Per-topic QoS. Best effort subscribers match every publisher; reliable publishers match every subscriber."""

    reliability: Literal["reliable", "best_effort"] | None = None
    durability: Literal["volatile", "transient_local"] = "volatile"
    depth: int = Field(1, gt=0, le=1000, description="KEEP_LAST history depth")


def _ros_type(v: str) -> str:
    try:
        return types.normalize_type(v, key="")
    except ConfigError as e:  # pydantic reports ValueErrors with the key's full path
        raise ValueError(e.message.lstrip(": ")) from None


def _topic(v: str | None) -> str | None:
    if v is None:
        return None
    try:
        return types.check_topic(v, key="")
    except ConfigError as e:
        raise ValueError(e.message.lstrip(": ")) from None


class ObservationTopic(_Strict):
    """One observation field taken from the newest message on one topic."""

    topic: str
    type: str
    max_age_s: float | None = Field(None, gt=0, description="newest message older than this at a tick is stale")
    qos: QosConfig = Field(default_factory=QosConfig)
    # JointState: joint order in the observation, and which arrays (concatenated per array).
    joints: list[str] = Field(default_factory=list)
    arrays: list[Literal["position", "velocity", "effort"]] = Field(default_factory=lambda: ["position"])  # type: ignore[arg-type]
    # Float64MultiArray: expected length.
    size: int | None = Field(None, gt=0)
    # Images: the size the policy sees (messages of another size are refused), channels and codec.
    height: int | None = Field(None, gt=0, le=4096)
    width: int | None = Field(None, gt=0, le=4096)
    channels: Literal[1, 3] = 3
    codec: Literal["raw", "png", "jpeg"] = "raw"
    quality: int = Field(90, ge=1, le=100)

    _check_topic = field_validator("topic")(_topic)
    _check_type = field_validator("type")(_ros_type)

    @model_validator(mode="after")
    def _per_type(self) -> "ObservationTopic":
        if self.type not in OBS_TYPES:
            raise ValueError(f"observation type {self.type!r} is not supported; supported: {', '.join(OBS_TYPES)}")
        if self.type == "sensor_msgs/msg/JointState" and not self.joints:
            raise ValueError("JointState observations need 'joints' (the joint names, in order)")
        if self.type == "std_msgs/msg/Float64MultiArray" and self.size is None:
            raise ValueError("Float64MultiArray observations need 'size'")
        if self.type in IMAGE_TYPES and (self.height is None or self.width is None):
            raise ValueError("image observations need 'height' and 'width'")
        return self


class ActionTopic(_Strict):
    """A slice of the action vector, published to one topic at every tick."""

    topic: str
    type: str
    qos: QosConfig = Field(default_factory=QosConfig)
    joints: list[str] = Field(default_factory=list, description="JointTrajectory: joint names, one action entry each")
    mode: Literal["positions", "velocities"] = Field("positions", description="JointTrajectory: what the action sets")
    time_from_start_s: float = Field(0.1, ge=0, description="JointTrajectory: when the single point should be reached")
    axes: list[str] = Field(default_factory=lambda: list(TWIST_AXES), description="Twist: which axes the action sets")
    size: int | None = Field(None, gt=0, description="Float64MultiArray: action entries")
    low: list[float] | float = -1.0
    high: list[float] | float = 1.0

    _check_topic = field_validator("topic")(_topic)
    _check_type = field_validator("type")(_ros_type)

    @property
    def dim(self) -> int:
        if self.type == "trajectory_msgs/msg/JointTrajectory":
            return len(self.joints)
        if self.type == "geometry_msgs/msg/Twist":
            return len(self.axes)
        return int(self.size or 0)

    def bounds(self) -> tuple[list[float], list[float]]:
        lo = self.low if isinstance(self.low, list) else [self.low] * self.dim
        hi = self.high if isinstance(self.high, list) else [self.high] * self.dim
        return lo, hi

    @model_validator(mode="after")
    def _per_type(self) -> "ActionTopic":
        if self.type not in ACTION_TYPES:
            raise ValueError(f"action type {self.type!r} is not supported; supported: {', '.join(ACTION_TYPES)}")
        if self.type == "trajectory_msgs/msg/JointTrajectory" and not self.joints:
            raise ValueError("JointTrajectory actions need 'joints'")
        if self.type == "std_msgs/msg/Float64MultiArray" and self.size is None:
            raise ValueError("Float64MultiArray actions need 'size'")
        bad = [a for a in self.axes if a not in TWIST_AXES]
        if bad:
            raise ValueError(f"unknown Twist axes {bad}; known: {', '.join(TWIST_AXES)}")
        lo, hi = self.bounds()
        if len(lo) != self.dim or len(hi) != self.dim:
            raise ValueError(f"low/high need {self.dim} entries (one per action entry) or one number")
        if any(a > b for a, b in zip(lo, hi)):
            raise ValueError("low must not exceed high")
        return self


class SignalTopic(_Strict):
    """An optional signal from the robot's own nodes; each new message counts once, at the next step."""

    topic: str
    qos: QosConfig = Field(default_factory=lambda: QosConfig(reliability="reliable", depth=10))

    _check_topic = field_validator("topic")(_topic)


class ResetConfig(_Strict):
    """What reset() does before waiting for fresh observations."""

    home: list[float] | None = Field(None, description="action published once at reset (e.g. the home pose)")
    trigger_topic: str | None = Field(None, description="std_msgs/msg/Empty published at reset (your reset node)")
    settle_s: float = Field(0.0, ge=0, description="wait this long after home/trigger before observing")

    _check_topic = field_validator("trigger_topic")(_topic)


class Ros2Config(DriverConfig):
    """A robot that already speaks ROS 2, mapped topic by topic."""

    backend: Literal["auto", "dds", "rclpy"] = Field("auto", description="auto: rclpy if importable, else cyclonedds")
    domain_id: int = Field(0, ge=0, le=232)
    localhost_only: bool = Field(False, description="DDS backend: keep all traffic on the loopback interface")
    identity: str = Field(default_factory=lambda: f"ros2-{socket.gethostname()}")
    rate_hz: float = Field(20.0, gt=0, le=1000, description="control tick; the driver paces step()")
    max_age_s: float = Field(0.25, gt=0, description="default freshness bound of every observation topic")
    on_stale: Literal["flag", "pause"] = Field("flag", description="what a stale observation at a tick does")
    pause_timeout_s: float = Field(10.0, gt=0, description="a paused step gives up (truncating the episode) after this")
    reset_timeout_s: float = Field(60.0, gt=0, description="reset() fails with a clear error if data stays missing this long")
    episode_steps: int = Field(200, gt=0, description="episodes are truncated after this many steps")
    observations: dict[str, ObservationTopic]
    actions: list[ActionTopic]
    reward: SignalTopic | None = Field(None, description="std_msgs/msg/Float64 reward from the robot's nodes")
    success: SignalTopic | None = Field(None, description="std_msgs/msg/Bool; true ends the episode as a success")
    reset: ResetConfig = Field(default_factory=ResetConfig)

    @model_validator(mode="after")
    def _check(self) -> "Ros2Config":
        if not self.observations:
            raise ValueError("at least one observation topic is needed")
        if not self.actions:
            raise ValueError("at least one action topic is needed")
        for name in self.observations:
            if not name or not all(c.isalnum() or c in "_-" for c in name):
                raise ValueError(f"observation name {name!r}: use letters, digits, '_' or '-'")
        dim = sum(a.dim for a in self.actions)
        if self.reset.home is not None and len(self.reset.home) != dim:
            raise ValueError(f"reset.home has {len(self.reset.home)} entries, the action has {dim}")
        return self

    def age_limit(self, field: str) -> float:
        return self.observations[field].max_age_s or self.max_age_s
