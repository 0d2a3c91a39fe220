"""The agent's ROS 2 bridge, seen from a separate DDS participant with hand-written ROS 2 types."""

import json
import queue
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from harness.waits import wait_for

from harness.dds import loopback_domain  # noqa: E402

DOMAIN = loopback_domain()

from cyclonedds.core import Listener, Policy, Qos  # noqa: E402
from cyclonedds.domain import DomainParticipant  # noqa: E402
from cyclonedds.idl import IdlStruct  # noqa: E402
from cyclonedds.idl import types as t  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.sub import DataReader  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402


@dataclass
class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


@dataclass
class Bool_(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
    data: bool


@dataclass
class Float64_(IdlStruct, typename="std_msgs::msg::dds_::Float64_"):
    data: t.float64


@dataclass
class MultiArrayDimension_(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    label: str
    size: t.uint32
    stride: t.uint32


@dataclass
class MultiArrayLayout_(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    dim: t.sequence[MultiArrayDimension_]
    data_offset: t.uint32


@dataclass
class Float64MultiArray_(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
    layout: MultiArrayLayout_
    data: t.sequence[t.float64]


QOS = Qos(Policy.Reliability.Reliable(0), Policy.History.KeepLast(10), Policy.DataRepresentation(use_cdrv0_representation=True))
LATCHED = Qos(Policy.Reliability.Reliable(0), Policy.Durability.TransientLocal, Policy.History.KeepLast(10),
              Policy.DataRepresentation(use_cdrv0_representation=True))


@pytest.fixture
def setup():
    from edge_agent.ros2_bridge import Ros2Bridge

    commands: queue.Queue = queue.Queue()
    bridge = Ros2Bridge("arm-01", commands.put, domain_id=DOMAIN, backend="dds")
    bridge.start()
    dp = DomainParticipant(DOMAIN)
    yield bridge, dp, commands
    bridge.close()


def _reader(dp, topic, cls, qos=QOS):
    q: queue.Queue = queue.Queue()

    def on_data(r):
        if r is None:  # fired during the reader's creation; drained below
            return
        for s in r.take(N=16):
            if isinstance(s, cls):
                q.put(s)

    reader = DataReader(dp, Topic(dp, "rt" + topic, cls), qos=qos, listener=Listener(on_data_available=on_data))
    on_data(reader)
    return reader, q


def _wait_matched(entity, getter):
    wait_for(getattr(entity, getter), 10, f"a DDS match ({getter})", every=0.01)


def test_status_actions_and_episodes_reach_ros(setup):
    bridge, dp, _ = setup
    assert bridge.namespace == "/fleetrl/arm_01"
    bridge.publish_status({"link": "connected", "policy_version": 3, "episode": "e1", "step": 7, "intervention": False})
    st_r, st_q = _reader(dp, "/fleetrl/arm_01/status", String_, LATCHED)  # joins late: transient-local delivers
    ep_r, ep_q = _reader(dp, "/fleetrl/arm_01/episode", String_, LATCHED)
    act_r, act_q = _reader(dp, "/fleetrl/arm_01/action", Float64MultiArray_)
    _wait_matched(act_r, "get_matched_publications")
    status = json.loads(st_q.get(timeout=5).data)
    assert status["robot_id"] == "arm-01" and status["policy_version"] == 3 and status["link"] == "connected"
    bridge.publish_episode_boundary("e1", "start")
    bridge.publish_action(np.array([0.5, -0.25], np.float32), version=3)
    bridge.publish_episode_boundary("e1", "end")
    act = act_q.get(timeout=5)
    assert act.data == [0.5, -0.25] and act.layout.dim[0].label == "policy_version=3"
    events = [json.loads(ep_q.get(timeout=5).data) for _ in range(2)]
    assert [(e["episode_id"], e["event"]) for e in events] == [("e1", "start"), ("e1", "end")]


def test_commands_from_ros_reach_the_callback(setup):
    bridge, dp, commands = setup
    writers = {
        rel: DataWriter(dp, Topic(dp, "rt/fleetrl/arm_01/cmd/" + rel, cls), qos=QOS)
        for rel, cls in (("episode", String_), ("reward", Float64_), ("intervention", Bool_), ("pause", Bool_))
    }
    for w in writers.values():
        _wait_matched(w, "get_matched_subscriptions")
    writers["episode"].write(String_("jump"))  # refused, logged, not fatal
    writers["episode"].write(String_("start"))
    writers["intervention"].write(Bool_(True))
    writers["reward"].write(Float64_(1.5))
    writers["pause"].write(Bool_(True))
    writers["episode"].write(String_("stop"))
    got = {}
    for _ in range(5):
        c = commands.get(timeout=5)
        got[c.kind] = c.value
    assert got == {"start_episode": None, "intervention": True, "reward": 1.5, "pause": True, "stop_episode": None}
    assert bridge.commands_rejected == 1 and commands.empty()


def test_handler_errors_do_not_stop_commands(setup):
    from edge_agent.ros2_bridge import Ros2Bridge

    _, dp, _ = setup
    seen = []
    lock = threading.Lock()

    def flaky(cmd):
        with lock:
            seen.append(cmd.value)
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    bridge = Ros2Bridge("arm-02", flaky, namespace="/lab/arm2", domain_id=DOMAIN, backend="dds")
    bridge.start()
    try:
        w = DataWriter(dp, Topic(dp, "rt/lab/arm2/cmd/reward", Float64_), qos=QOS)
        _wait_matched(w, "get_matched_subscriptions")
        w.write(Float64_(1.0))
        w.write(Float64_(2.0))
        wait_for(lambda: len(seen) >= 2, 10, "both rewards at the handler (the first one raised)")
        assert seen == [1.0, 2.0]
        with pytest.raises(Exception, match="episode event"):
            bridge.publish_episode_boundary("e", "exploded")
    finally:
        bridge.close()


def test_bridged_recorder_publishes_steps_and_boundaries(setup):
    from edge_agent.recorder import Recorder
    from edge_agent.ros2_bridge import bridged_recorder
    from shared.chunk import StepRecord

    bridge, dp, _ = setup
    ep_r, ep_q = _reader(dp, "/fleetrl/arm_01/episode", String_, LATCHED)
    act_r, act_q = _reader(dp, "/fleetrl/arm_01/action", Float64MultiArray_)
    _wait_matched(act_r, "get_matched_publications")
    chunks = []
    rec = bridged_recorder(bridge, Recorder(10, chunks.append))
    eid = rec.start_episode()
    o = {"q": np.zeros(2, np.float32)}
    for i in range(3):
        rec.add(StepRecord(obs=o, action=np.array([i, -i], np.float32), reward=0.0, next_obs=o,
                           terminated=i == 2, truncated=False, policy_version=4, step=i))
    assert len(chunks) == 1 and len(chunks[0].steps) == 3  # recording unchanged
    acts = [act_q.get(timeout=5) for _ in range(3)]
    assert [a.data for a in acts] == [[0, 0], [1, -1], [2, -2]] and acts[0].layout.dim[0].label == "policy_version=4"
    events = [json.loads(ep_q.get(timeout=5).data) for _ in range(2)]
    assert [(e["episode_id"], e["event"]) for e in events] == [(eid, "start"), (eid, "end")]
