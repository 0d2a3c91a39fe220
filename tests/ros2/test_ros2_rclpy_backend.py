"""The rclpy backend: runs where ROS 2 is installed and sourced, skipped elsewhere."""

import importlib.util
import queue
import time

import numpy as np
import pytest

from harness.dds import domain_ids

HAVE_RCLPY = importlib.util.find_spec("rclpy") is not None
needs_rclpy = pytest.mark.skipif(not HAVE_RCLPY, reason="rclpy is not importable (no sourced ROS 2 install on this machine)")
DOMAIN = domain_ids()[0]


def test_auto_picks_a_backend_that_exists():
    from hal_drivers.ros2.backend import open_backend, rclpy_available

    b = open_backend("auto", DOMAIN, "fleetrl_test", localhost_only=True)
    try:
        assert b.name == ("rclpy" if rclpy_available() else "dds")
    finally:
        b.close()


@pytest.mark.skipif(HAVE_RCLPY, reason="rclpy is importable here: the missing-rclpy error cannot be shown")
def test_asking_for_rclpy_without_it_is_a_config_error():
    from hal_drivers.ros2.backend import open_backend
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="robot.options.backend: 'rclpy' needs a sourced ROS 2 install"):
        open_backend("rclpy", DOMAIN, "x", key="robot.options.backend")


@needs_rclpy
def test_rclpy_backend_round_trips_cdr():
    from hal_drivers.ros2 import types
    from hal_drivers.ros2.config import QosConfig
    from hal_drivers.ros2.rclpy_backend import RclpyBackend

    a, b = RclpyBackend(DOMAIN, "fleetrl_a", True), RclpyBackend(DOMAIN, "fleetrl_b", True)
    try:
        got: queue.Queue = queue.Queue()
        a.subscribe("/fleetrl_test/js", "sensor_msgs/msg/JointState", QosConfig(reliability="reliable", depth=10), lambda d, t: got.put(d))
        pub = b.publisher("/fleetrl_test/js", "sensor_msgs/msg/JointState", QosConfig(reliability="reliable", depth=10))
        msg = types.new("sensor_msgs/msg/JointState", header=types.header(5), name=["a"], position=np.array([1.5]),
                        velocity=np.array([], float), effort=np.array([], float))
        deadline = time.monotonic() + 10
        while got.empty() and time.monotonic() < deadline:  # publish until discovery has matched
            pub.publish(types.encode(msg, "sensor_msgs/msg/JointState"))
            time.sleep(0.05)  # republish interval of a bounded publish-until-received wait (no harness helper publishes)
        assert types.decode(got.get(timeout=1), "sensor_msgs/msg/JointState").position.tolist() == [1.5]
    finally:
        a.close()
        b.close()


@needs_rclpy
def test_driver_on_rclpy_reads_joint_states_from_an_rclpy_node():
    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import JointState

    from hal_drivers import registry

    import hal_drivers.ros2  # noqa: F401

    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    node = rclpy.create_node("fake_arm", context=ctx)
    pub = node.create_publisher(JointState, "/joint_states", 10)
    robot = registry.create("ros2", {
        "backend": "rclpy", "domain_id": DOMAIN, "localhost_only": True, "rate_hz": 20, "max_age_s": 0.5, "reset_timeout_s": 0.2,
        "observations": {"q": {"topic": "/joint_states", "type": "sensor_msgs/msg/JointState", "joints": ["b", "a"]}},
        "actions": [{"topic": "/cmd", "type": "std_msgs/msg/Float64MultiArray", "size": 1}],
    })
    try:
        msg = JointState(name=["a", "b"], position=[1.0, 2.0], velocity=[], effort=[])
        obs = None
        deadline = time.monotonic() + 10
        while obs is None and time.monotonic() < deadline:
            pub.publish(msg)
            try:
                obs = robot.reset()
            except hal_drivers.ros2.Ros2Unavailable:
                pass  # not matched yet
        assert obs is not None and obs["q"].tolist() == [2.0, 1.0]
        assert robot.backend_name == "rclpy"
    finally:
        robot.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
