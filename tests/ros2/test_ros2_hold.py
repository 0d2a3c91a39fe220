"""The ros2 driver's hold action (``Robot.hold_action``): position targets at the measured joint
positions, velocity commands zero, and no hold at all when a topic's hold is unknown. The mapping
on its own, then the driver against a DDS peer publishing JointState (the peer of
test_ros2_dds_driver.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hal_drivers.ros2.config import ActionTopic, ObservationTopic
from hal_drivers.ros2.hold import hold_sources, hold_values
from tests.ros2.test_ros2_dds_driver import make_robot, options, peer  # noqa: F401 - fixtures

JS = "sensor_msgs/msg/JointState"
JT = "trajectory_msgs/msg/JointTrajectory"
TWIST = "geometry_msgs/msg/Twist"


def _obs(**kw) -> ObservationTopic:
    return ObservationTopic(topic="/joint_states", type=JS, **kw)


def test_position_targets_hold_the_measured_positions_picked_by_name():
    observations = {
        "wrench": ObservationTopic(topic="/ft", type="geometry_msgs/msg/WrenchStamped"),
        "q": _obs(joints=["c", "a", "b"], arrays=["velocity", "position"]),
    }
    actions = [ActionTopic(topic="/arm", type=JT, joints=["b", "a"]),
               ActionTopic(topic="/base", type=TWIST, axes=["linear.x", "angular.z"]),
               ActionTopic(topic="/wrist", type=JT, joints=["c"], mode="velocities")]
    sources = hold_sources(actions, observations)
    assert sources is not None
    # velocities of c, a, b, then positions of c, a, b
    obs = {"q": np.array([0.3, 0.1, 0.2, 3.0, 1.0, 2.0], np.float32), "wrench": np.zeros(6, np.float32)}
    assert hold_values(sources, obs).tolist() == [2.0, 1.0, 0.0, 0.0, 0.0]
    obs["q"][3:] = [-3.0, -1.0, -2.0]  # the arm moved: so does its hold
    assert hold_values(sources, obs).tolist() == [-2.0, -1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("observations, actions", [
    ({"q": _obs(joints=["a"], arrays=["position"])}, [ActionTopic(topic="/arm", type=JT, joints=["a", "b"])]),
    ({"q": _obs(joints=["a", "b"], arrays=["velocity", "effort"])}, [ActionTopic(topic="/arm", type=JT, joints=["a"])]),
    ({"q": _obs(joints=["a"])}, [ActionTopic(topic="/base", type=TWIST),
                                 ActionTopic(topic="/grip", type="std_msgs/msg/Float64MultiArray", size=1)]),
], ids=["a joint not measured", "no positions measured", "a Float64MultiArray"])
def test_no_safe_hold_for_a_topic_means_no_hold_at_all(observations, actions):
    assert hold_sources(actions, observations) is None


def test_the_driver_holds_at_the_positions_it_measures(make_robot):  # noqa: F811 - the fixture
    arm_and_base = [options()["actions"][0], options()["actions"][1]]  # JointTrajectory (positions) + Twist
    robot = make_robot(actions=arm_and_base)
    obs = robot.reset()
    q = obs["q"]  # positions of a, b, then velocities
    assert q[0] > 0 and robot.hold_action(obs).tolist() == [q[0], q[1], 0.0, 0.0]
    obs2 = robot.step(robot.hold_action(obs)).observation
    assert obs2["q"][0] > q[0]  # the peer's joints move on
    assert robot.hold_action(obs2).tolist() == [obs2["q"][0], obs2["q"][1], 0.0, 0.0]


def test_the_driver_has_no_hold_with_a_topic_it_cannot_hold(make_robot):  # noqa: F811 - the fixture
    robot = make_robot()  # the gripper is a Float64MultiArray
    assert robot.hold_action(robot.reset()) is None
