"""ROS 2 message types and their CDR encoding, from one typestore (rosbags).

Both backends move CDR bytes, never language bindings of messages, so a
single codec (rosbags, pure Python, no ROS install) serves the rclpy path,
the pure-DDS path and the MCAP export alike.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from shared.errors import ConfigError

_TYPE_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)/(?:(msg)/)?([A-Za-z][A-Za-z0-9_]*)$")
_TOPIC_RE = re.compile(r"^/?[A-Za-z_~][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The ROS 2 Humble message definitions (stable across Humble..Jazzy for the types used here)."""
    try:
        from rosbags.typesys import Stores, get_typestore
    except ImportError as e:
        raise ConfigError(f"robot.driver: the ros2 driver needs rosbags ({e}); pip install 'fleetrl[ros2]'") from None
    return get_typestore(Stores.ROS2_HUMBLE)


def normalize_type(name: str, key: str = "type") -> str:
    """``sensor_msgs/JointState`` or ``sensor_msgs/msg/JointState`` -> ``sensor_msgs/msg/JointState``."""
    m = _TYPE_RE.match(name.strip())
    if not m:
        raise ConfigError(f"{key}: {name!r} is not a ROS 2 message type like 'sensor_msgs/msg/JointState'")
    full = f"{m.group(1)}/msg/{m.group(3)}"
    if full not in typestore().fielddefs:
        raise ConfigError(f"{key}: unknown ROS 2 message type {full!r}")
    return full


def dds_type_name(ros_type: str) -> str:
    """``sensor_msgs/msg/JointState`` -> ``sensor_msgs::msg::dds_::JointState_`` (the name on the wire)."""
    pkg, _, name = ros_type.split("/")
    return f"{pkg}::msg::dds_::{name}_"


def check_topic(name: str, key: str = "topic") -> str:
    """A fully qualified ROS 2 topic name (``/joint_states``); relative names are taken from the root."""
    if not _TOPIC_RE.match(name) or "__" in name:
        raise ConfigError(f"{key}: {name!r} is not a valid ROS 2 topic name")
    return name if name.startswith("/") else "/" + name


def dds_topic_name(topic: str) -> str:
    """ROS 2 topic ``/a/b`` is DDS topic ``rt/a/b``."""
    return "rt" + check_topic(topic)


def decode(cdr: bytes, ros_type: str) -> Any:
    """CDR bytes (with the 4-byte encapsulation header) -> a rosbags message object."""
    return typestore().deserialize_cdr(cdr, ros_type)


def encode(msg: Any, ros_type: str) -> bytes:
    return bytes(typestore().serialize_cdr(msg, ros_type))


def new(ros_type: str, **fields: Any) -> Any:
    """Build a message object; unspecified fields are not allowed (rosbags types are strict)."""
    return typestore().types[ros_type](**fields)


def msgdef(ros_type: str) -> str:
    """The ``ros2msg`` schema text (with dependencies) that MCAP readers and ``ros2 bag`` expect."""
    return typestore().generate_msgdef(ros_type, ros_version=2)[0]


def header(t_ns: int, frame_id: str = "") -> Any:
    stamp = new("builtin_interfaces/msg/Time", sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))
    return new("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)
