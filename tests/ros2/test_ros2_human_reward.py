"""A ROS 2 reward label (std_msgs/Float64 on <ns>/cmd/reward) lands in a stored row's human_reward.

Real DDS (cyclonedds, loopback), the agent's real bridge and operator wiring,
a real control loop on the MuJoCo Fetch robot; the row is checked in the
Arrow batch the chunk is encoded from, as the learner stores it.
"""

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from harness.waits import wait_for

from harness.dds import loopback_domain  # noqa: E402

DOMAIN = loopback_domain()

from cyclonedds.core import Policy, Qos  # noqa: E402
from cyclonedds.domain import DomainParticipant  # noqa: E402
from cyclonedds.idl import IdlStruct  # noqa: E402
from cyclonedds.idl import types as t  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402


@dataclass
class Float64_(IdlStruct, typename="std_msgs::msg::dds_::Float64_"):
    data: t.float64


QOS = Qos(Policy.Reliability.Reliable(0), Policy.History.KeepLast(10), Policy.DataRepresentation(use_cdrv0_representation=True))


@pytest.fixture
def running_loop():
    from edge_agent.control_loop import ControlLoop
    from edge_agent.operator import OperatorControls
    from edge_agent.policy_holder import PolicyHolder
    from edge_agent.recorder import PendingChunk, Recorder
    from edge_agent.ros2_bridge import Ros2Bridge, bridged_recorder
    from hal_drivers import registry
    from shared.config import ControlConfig

    robot = registry.create("mujoco_fetch", {"seed": 0, "task": "reach", "max_episode_steps": 100_000})
    operator = OperatorControls()
    bridge = Ros2Bridge("arm-07", operator.apply, domain_id=DOMAIN, backend="dds")  # as the daemon wires it
    bridge.start()
    chunks: list[PendingChunk] = []
    lock = threading.Lock()

    def sink(pc: PendingChunk) -> None:
        with lock:
            chunks.append(pc)

    spec = robot.describe().episode_spec()
    holder = PolicyHolder({k: v.size for k, v in spec.observation.items() if not v.is_image}, spec.action_dim)
    recorder = bridged_recorder(bridge, Recorder(5, sink))
    loop = ControlLoop(robot, holder, recorder, ControlConfig(rate_hz=50), operator=operator)
    loop.start()
    yield loop, spec, chunks, lock
    loop.stop()
    loop.join(10)
    bridge.close()
    robot.close()


def test_reward_label_from_ros_lands_in_human_reward(running_loop):
    from shared.chunk import build_batch

    loop, spec, chunks, lock = running_loop
    wait_for(loop.running.is_set, 20, "the loop's first tick")
    dp = DomainParticipant(DOMAIN)
    w = DataWriter(dp, Topic(dp, "rt/fleetrl/arm_07/cmd/reward", Float64_), qos=QOS)
    wait_for(w.get_matched_subscriptions, 10, "the agent's cmd/reward subscription", every=0.01)
    w.write(Float64_(0.75))

    def labelled():
        with lock:
            return [(c, s) for c in chunks for s in c.steps if s.human_reward != 0.0]

    wait_for(labelled, 20, "a recorded row with the label")
    (chunk, row), = labelled()  # one message, one labelled step
    assert row.human_reward == 0.75
    assert row.reward <= 0.0, "the driver's reward keeps only the driver's rule"
    batch = build_batch(spec, "arm-07", chunk.episode_id, chunk.steps)  # the row as stored
    stored = np.asarray(batch.column("human_reward").to_pylist())
    at = next(i for i, s in enumerate(chunk.steps) if s is row)
    assert stored.tolist() == [s.human_reward for s in chunk.steps]
    assert float(stored[at]) == 0.75 and np.count_nonzero(stored) == 1
