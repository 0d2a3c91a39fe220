"""One interface over two ways of talking to ROS 2: rclpy, or DDS directly.

A backend moves CDR-encoded bytes (with the 4-byte encapsulation header)
between ROS 2 topics and callbacks; message (de)coding happens above it, in
:mod:`hal_drivers.ros2.types`, the same for both backends.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
from typing import Callable

from shared.errors import ConfigError

from .config import QosConfig

log = logging.getLogger("fleetrl.ros2")

#: called with (CDR bytes, receive time from time.monotonic_ns()) on a backend thread
MessageCallback = Callable[[bytes, int], None]


class Publisher(abc.ABC):
    @abc.abstractmethod
    def publish(self, cdr: bytes) -> None: ...


class Backend(abc.ABC):
    """A ROS 2 participant: subscriptions deliver bytes to callbacks on a backend thread."""

    name: str = "?"

    @abc.abstractmethod
    def subscribe(self, topic: str, ros_type: str, qos: QosConfig, callback: MessageCallback) -> None: ...

    @abc.abstractmethod
    def publisher(self, topic: str, ros_type: str, qos: QosConfig) -> Publisher: ...

    @abc.abstractmethod
    def close(self) -> None: ...


def rclpy_available() -> bool:
    return importlib.util.find_spec("rclpy") is not None


def open_backend(kind: str, domain_id: int, node_name: str, localhost_only: bool = True, key: str = "backend") -> Backend:
    """Open the configured backend; ``auto`` prefers rclpy (a ROS 2 install) over plain DDS."""
    if kind == "auto":
        kind = "rclpy" if rclpy_available() else "dds"
        log.info("event=ros2_backend_chosen backend=%s", kind)
    if kind == "rclpy":
        if not rclpy_available():
            raise ConfigError(f"{key}: 'rclpy' needs a sourced ROS 2 install; use 'dds' (cyclonedds) without one")
        from .rclpy_backend import RclpyBackend

        return RclpyBackend(domain_id, node_name, localhost_only)
    if kind == "dds":
        if importlib.util.find_spec("cyclonedds") is None:
            raise ConfigError(f"{key}: 'dds' needs the cyclonedds package: pip install 'fleetrl[ros2]'")
        from .dds import DdsBackend

        return DdsBackend(domain_id, localhost_only)
    raise ConfigError(f"{key}: unknown backend {kind!r}; use auto, dds or rclpy")
