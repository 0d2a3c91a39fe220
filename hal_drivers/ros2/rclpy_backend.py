"""The rclpy backend: used where ROS 2 is installed and sourced on the robot.

Subscriptions are ``raw=True`` and publishers publish serialized bytes, so
rclpy hands over the same CDR the DDS backend does and nothing above this
module depends on which backend runs. The node spins on its own executor
thread, in its own rclpy context, so the driver and the agent's bridge can
each hold one without sharing global rclpy state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from .backend import Backend, MessageCallback, Publisher
from .config import QosConfig

log = logging.getLogger("fleetrl.ros2")


def _qos(qos: QosConfig, default_reliable: bool) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = qos.reliability == "reliable" or (qos.reliability is None and default_reliable)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=qos.depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.durability == "transient_local" else DurabilityPolicy.VOLATILE,
    )


def _msg_class(ros_type: str) -> Any:
    from rosidl_runtime_py.utilities import get_message

    return get_message(ros_type)


class _RclpyPublisher(Publisher):
    def __init__(self, pub: Any):
        self._pub = pub

    def publish(self, cdr: bytes) -> None:
        self._pub.publish(cdr)  # rclpy publishes bytes as an already serialized message


class RclpyBackend(Backend):
    name = "rclpy"

    def __init__(self, domain_id: int, node_name: str, localhost_only: bool = True):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        if localhost_only:  # set, not defaulted: an inherited ROS_LOCALHOST_ONLY=0 must not open it to the LAN
            os.environ["ROS_LOCALHOST_ONLY"] = "1"  # read by the rmw at init (Humble, Iron)
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # Jazzy and later
        self._ctx = Context()
        rclpy.init(context=self._ctx, domain_id=domain_id)
        self._node = rclpy.create_node(node_name, context=self._ctx)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name=f"rclpy-{node_name}", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass
        except Exception:
            log.exception("event=rclpy_executor_failed")

    def subscribe(self, topic: str, ros_type: str, qos: QosConfig, callback: MessageCallback) -> None:
        def on_msg(data: bytes) -> None:
            try:
                callback(bytes(data), time.monotonic_ns())
            except Exception:
                log.exception("event=ros2_callback_failed topic=%s", topic)

        self._node.create_subscription(_msg_class(ros_type), topic, on_msg, _qos(qos, False), raw=True)

    def publisher(self, topic: str, ros_type: str, qos: QosConfig) -> Publisher:
        return _RclpyPublisher(self._node.create_publisher(_msg_class(ros_type), topic, _qos(qos, True)))

    def close(self) -> None:
        import rclpy

        if not self._ctx.ok():
            return
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        rclpy.shutdown(context=self._ctx)
        self._thread.join(timeout=2.0)
