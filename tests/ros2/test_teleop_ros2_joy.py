"""The ros2_joy teleop device against real Joy and Twist messages over DDS on loopback.

The publishing side uses hand-written DDS types (as a ROS 2 node's would look
on the wire), independent of the device's generated ones.
"""

import random
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from harness.waits import wait_for

pytest.importorskip("cyclonedds")
pytest.importorskip("rosbags")

from harness.dds import loopback_domain  # noqa: E402

DOMAIN = loopback_domain()

from cyclonedds.core import Policy, Qos  # noqa: E402
from cyclonedds.domain import DomainParticipant  # noqa: E402
from cyclonedds.idl import IdlStruct  # noqa: E402
from cyclonedds.idl import types as t  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402

from hal_drivers import registry  # noqa: E402
from shared.errors import ConfigError  # noqa: E402


@dataclass
class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: t.int32
    nanosec: t.uint32


@dataclass
class Header_(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time_
    frame_id: str


@dataclass
class Joy_(IdlStruct, typename="sensor_msgs::msg::dds_::Joy_"):
    header: Header_
    axes: t.sequence[t.float32]
    buttons: t.sequence[t.int32]


@dataclass
class Vector3_(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: t.float64
    y: t.float64
    z: t.float64


@dataclass
class Twist_(IdlStruct, typename="geometry_msgs::msg::dds_::Twist_"):
    linear: Vector3_
    angular: Vector3_


@dataclass
class TwistStamped_(IdlStruct, typename="geometry_msgs::msg::dds_::TwistStamped_"):
    header: Header_
    twist: Twist_


QOS = Qos(Policy.Reliability.Reliable(0), Policy.History.KeepLast(10), Policy.DataRepresentation(use_cdrv0_representation=True))
_dp = None


def _participant():
    """The publishing participant, made after the first device opened the domain loopback-only."""
    global _dp
    if _dp is None:
        _dp = DomainParticipant(DOMAIN)
    return _dp


def _topic_name(stem):
    return f"/teleop_test/{stem}_{random.randrange(1 << 30)}"


def _device(topic, mode="hold", action_dim=4, **opts):
    dev = registry.create("ros2_joy", {"topic": topic, "backend": "dds", "domain_id": DOMAIN, **opts}, section="teleop")
    dev.start(action_dim, mode)
    return dev


def _writer(topic, cls):
    w = DataWriter(_participant(), Topic(_participant(), "rt" + topic, cls), qos=QOS)
    wait_for(w.get_matched_subscriptions, 10, "the device's subscription to match", every=0.01)
    return w


def _joy(axes, buttons):
    return Joy_(Header_(Time_(0, 0), ""), [float(a) for a in axes], list(buttons))


def _buttons(*down, n=11):
    return [1 if i in down else 0 for i in range(n)]


class _Repeater:
    """Publishes the current message at 50 Hz (like joy_node's autorepeat) until stopped."""

    def __init__(self, writer, msg):
        self.writer, self.msg = writer, msg
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.writer.write(self.msg)

    def stop(self):
        self._stop.set()
        self._thread.join()


def test_joy_axes_buttons_and_stale_release():
    topic = _topic_name("joy")
    dev = _device(topic, timeout_s=0.4)
    try:
        cmd = dev.read({})
        assert not cmd.takeover and not cmd.action.any()  # nothing heard yet
        w = _writer(topic, Joy_)
        # default map: axes[1] -> action 0, axes[0] -> 1, axes[3] -> 2; button 10 holds take-over
        rep = _Repeater(w, _joy([0.5, -1.0, 0.0, 0.02], _buttons(10)))
        cmd = wait_for(lambda: (c := dev.read({})).takeover and c, 10, "take-over from button 10", every=0.01)
        assert np.allclose(cmd.action, [-1.0, 0.5, 0.0, 0.0])  # axes[3]=0.02 is inside the 0.05 deadzone
        rep.msg = _joy([0.0, 0.25, 0.0, 0.0], _buttons())  # button released: take-over ends with the next message
        cmd = wait_for(lambda: not (c := dev.read({})).takeover and c, 10, "button 10 released", every=0.01)
        assert np.allclose(cmd.action, [0.25, 0.0, 0.0, 0.0])
        # a press lasting several messages is one event; episode buttons do not take over
        events, reward = [], 0.0

        def seen(n):
            nonlocal reward
            c = dev.read({})
            assert not c.takeover
            events.extend(c.events)
            reward += c.reward
            return len(events) >= n

        rep.msg = _joy([0.0] * 4, _buttons(0, 3))
        wait_for(lambda: seen(1), 10, "success", every=0.01)
        rep.msg = _joy([0.0] * 4, _buttons(1, 2))
        wait_for(lambda: seen(3), 10, "failure, reset", every=0.01)
        time.sleep(0.2)  # the buttons stay down for ~10 more messages: no repeats
        seen(0)
        assert events == ["success", "failure", "reset"] and reward == 1.0
        # the publisher goes quiet while holding take-over: stale input releases it and zeroes the action
        rep.msg = _joy([0.0, 1.0, 0.0, 0.0], _buttons(10))
        wait_for(lambda: dev.read({}).takeover, 10, "take-over again", every=0.01)
        rep.stop()
        t_stop = time.monotonic()
        cmd = wait_for(lambda: not (c := dev.read({})).takeover and c, 10, "stale input to release", every=0.01)
        assert not cmd.action.any() and time.monotonic() - t_stop >= 0.2
        assert dev.messages > 10
    finally:
        dev.close()


def test_joy_toggle_mode_and_custom_map():
    topic = _topic_name("joy_toggle")
    dev = _device(topic, "toggle", action_dim=2, timeout_s=2.0, takeover_button="4",
                  axes=[{"source": "2", "action": 0, "scale": -1}, {"source": "b5", "action": 1}], success_button="6",
                  failure_button="7", reset_button="8", reward_button="9")
    try:
        w = _writer(topic, Joy_)
        w.write(_joy([0, 0, 0.5], _buttons(4, 5)))
        cmd = wait_for(lambda: (c := dev.read({})).takeover and c, 10, "toggle on", every=0.01)
        assert np.allclose(cmd.action, [-0.5, 1.0])
        w.write(_joy([0, 0, 0.5], _buttons()))  # release: a toggle stays on
        wait_for(lambda: dev.messages >= 2, 10, "the release message")
        assert dev.read({}).takeover
        w.write(_joy([0, 0, 0.5], _buttons(4)))
        wait_for(lambda: not dev.read({}).takeover, 10, "toggle off", every=0.01)
    finally:
        dev.close()


@pytest.mark.parametrize("kind", ["Twist", "geometry_msgs/msg/TwistStamped"])
def test_twist_takes_over_while_messages_arrive(kind):
    topic = _topic_name("cmd_vel")
    stamped = kind.endswith("Stamped")
    dev = _device(topic, type=kind, timeout_s=0.3,
                  axes=[{"source": "linear.x", "action": 0, "scale": 2.0}, {"source": "angular.z", "action": 2}])
    try:
        w = _writer(topic, TwistStamped_ if stamped else Twist_)
        twist = Twist_(Vector3_(0.25, 9.0, 0.0), Vector3_(0.0, 0.0, -0.7))
        rep = _Repeater(w, TwistStamped_(Header_(Time_(1, 2), "base"), twist) if stamped else twist)
        cmd = wait_for(lambda: (c := dev.read({})).takeover and c, 10, "Twist messages to take over", every=0.01)
        assert np.allclose(cmd.action, [0.5, 0.0, -0.7, 0.0], atol=1e-6)  # linear.y is not mapped
        rep.stop()
        cmd = wait_for(lambda: not (c := dev.read({})).takeover and c, 10, "silence to release", every=0.01)
        assert not cmd.action.any()
    finally:
        dev.close()


def test_ros2_joy_config_errors():
    def create(**opts):
        return registry.create("ros2_joy", opts, section="teleop")

    with pytest.raises(ConfigError, match=r"teleop\.options\.topic: .*not a valid ROS 2 topic"):
        create(topic="/bad topic")
    with pytest.raises(ConfigError, match=r"teleop\.options\.type"):
        create(type="sensor_msgs/msg/Image")
    with pytest.raises(ConfigError, match=r"teleop\.options\.timeout_s"):
        create(timeout_s=0)
    with pytest.raises(ConfigError, match=r"teleop\.options\.nope: unknown key"):
        create(nope=1)
    with pytest.raises(ConfigError, match=r"teleop\.options\.axes\[0\]\.source: 'linear\.q' is not linear\.x"):
        create(type="Twist", axes=[{"source": "linear.q", "action": 0}])
    with pytest.raises(ConfigError, match=r"teleop\.options\.axes\[1\]\.source: 'x' is not an index into Joy\.axes"):
        create(axes=[{"source": "0", "action": 0}, {"source": "x", "action": 1}])
    with pytest.raises(ConfigError, match=r"teleop\.options\.success_button: a Twist topic has no buttons"):
        create(type="Twist", success_button="0")
    with pytest.raises(ConfigError, match=r"teleop\.options\.reset_button: button 0 is already the success_button"):
        create(reset_button="0")
    with pytest.raises(ConfigError, match=r"teleop\.options\.takeover_button: 'RB' is not an index into Joy\.buttons"):
        create(takeover_button="RB")
    with pytest.raises(ConfigError, match=r"teleop\.takeover: 'toggle' needs a button"):
        create(type="Twist", backend="dds", domain_id=DOMAIN).start(4, "toggle")
    with pytest.raises(ConfigError, match=r"teleop\.options\.axes\[0\]: action 3 does not exist"):
        create(backend="dds", domain_id=DOMAIN, axes=[{"source": "0", "action": 3}]).start(2)
    assert create(type="sensor_msgs/Joy").ros_type == "sensor_msgs/msg/Joy"
    d = registry.describe("ros2_joy", {"topic": "spacenav/joy", "domain_id": 7})
    assert d.driver == "ros2_joy" and d.identity == "ros2:7:/spacenav/joy" and d.kind.value == "teleop"


def test_undecodable_messages_are_dropped_with_one_warning(caplog):
    """Garbage on the topic never reaches the backend thread as a traceback per message."""
    import logging

    from hal_drivers.ros2 import types

    dev = registry.create("ros2_joy", {}, section="teleop")
    dev._action_dim = 4
    good = types.encode(types.new("sensor_msgs/msg/Joy", header=types.new(
        "std_msgs/msg/Header", stamp=types.new("builtin_interfaces/msg/Time", sec=0, nanosec=0), frame_id=""),
        axes=np.array([0.0, 0.0, 0.0, 0.0], np.float32), buttons=np.array([0] * 11, np.int32)), "sensor_msgs/msg/Joy")
    with caplog.at_level(logging.WARNING, logger="fleetrl.teleop"):
        for _ in range(3):
            dev._on_message(b"\x00\x01\x00\x00\xff", time.monotonic_ns())  # truncated CDR
        dev._on_message(good, time.monotonic_ns())
        dev._on_message(b"\x00\x01\x00\x00\xff", time.monotonic_ns())
    refused = [r for r in caplog.records if "teleop_message_refused" in r.getMessage()]
    assert dev.bad_messages == 4 and dev.messages == 1 and len(refused) == 2  # once per run of bad ones
    assert not any(r.exc_info for r in caplog.records)
