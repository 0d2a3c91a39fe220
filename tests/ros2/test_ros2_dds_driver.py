"""The ros2 driver against a separate process speaking ROS 2 over DDS on loopback.

The peer process (this file run as a script) plays the robot's ROS 2 nodes
with hand-written DDS types, independent of the driver's generated ones: it
publishes JointState and Image at 100 Hz and reports every action message it
receives as raw CDR plus the writer's DDS type name; the test decodes those
bytes with rosbags.
"""


import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.dds import LOOPBACK, domain_ids

DOMAIN = domain_ids()[0]
H, W = 48, 64
ACTION_TOPICS = {"/arm/joint_trajectory": "JointTrajectory_", "/base/cmd_vel": "Twist_", "/gripper/cmd": "Float64MultiArray_"}


# --------------------------------------------------------------------------- the peer process


def _peer(domain: int) -> None:  # pragma: no cover - runs in the subprocess
    from cyclonedds.core import Listener, Policy, Qos
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.idl import IdlStruct, make_idl_struct
    from cyclonedds.idl import types as t
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    @dataclass
    class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
        sec: t.int32
        nanosec: t.uint32

    @dataclass
    class Duration_(IdlStruct, typename="builtin_interfaces::msg::dds_::Duration_"):
        sec: t.int32
        nanosec: t.uint32

    @dataclass
    class Header_(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
        stamp: Time_
        frame_id: str

    @dataclass
    class JointState_(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
        header: Header_
        name: t.sequence[str]
        position: t.sequence[t.float64]
        velocity: t.sequence[t.float64]
        effort: t.sequence[t.float64]

    @dataclass
    class Image_(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
        header: Header_
        height: t.uint32
        width: t.uint32
        encoding: str
        is_bigendian: t.uint8
        step: t.uint32
        data: t.sequence[t.uint8]

    @dataclass
    class JointTrajectoryPoint_(IdlStruct, typename="trajectory_msgs::msg::dds_::JointTrajectoryPoint_"):
        positions: t.sequence[t.float64]
        velocities: t.sequence[t.float64]
        accelerations: t.sequence[t.float64]
        effort: t.sequence[t.float64]
        time_from_start: Duration_

    @dataclass
    class Vector3_(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
        x: t.float64
        y: t.float64
        z: t.float64

    @dataclass
    class MultiArrayDimension_(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
        label: str
        size: t.uint32
        stride: t.uint32

    @dataclass
    class MultiArrayLayout_(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
        dim: t.sequence[MultiArrayDimension_]
        data_offset: t.uint32

    layouts = {
        "JointTrajectory_": ("trajectory_msgs", {"header": Header_, "joint_names": t.sequence[str], "points": t.sequence[JointTrajectoryPoint_]}),
        "Twist_": ("geometry_msgs", {"linear": Vector3_, "angular": Vector3_}),
        "Float64MultiArray_": ("std_msgs", {"layout": MultiArrayLayout_, "data": t.sequence[t.float64]}),
    }

    class Raw:
        def __init__(self, data: bytes):
            self.data = data

    out_lock = threading.Lock()

    def emit(obj: dict) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    dp = DomainParticipant(domain)
    rel = Qos(Policy.Reliability.Reliable(0), Policy.History.KeepLast(10), Policy.DataRepresentation(use_cdrv0_representation=True))
    readers = []
    for topic, short in ACTION_TOPICS.items():
        pkg, fields = layouts[short]
        raw = make_idl_struct("Raw" + short, f"{pkg}::msg::dds_::{short}", fields, dataclassify=False)
        raw.deserialize = classmethod(lambda cls, data, *a, **k: Raw(bytes(data)))
        raw.deserialize_key = classmethod(lambda cls, *a, **k: None)

        def on_data(reader, topic=topic):
            for s in reader.take(N=64):
                if isinstance(s, Raw):
                    pubs = reader.get_matched_publications()
                    tn = reader.get_matched_publication_data(pubs[0]).type_name if pubs else None
                    emit({"topic": topic, "type_name": tn, "cdr": s.data.hex()})

        readers.append(DataReader(dp, Topic(dp, "rt" + topic, raw), qos=rel, listener=Listener(on_data_available=on_data)))
    js = DataWriter(dp, Topic(dp, "rt/joint_states", JointState_), qos=rel)
    cam = DataWriter(dp, Topic(dp, "rt/camera/image_raw", Image_), qos=rel)
    publishing = threading.Event()
    publishing.set()

    def publish_loop() -> None:
        k = 0
        next_t = time.monotonic()
        while True:
            next_t += 0.01
            time.sleep(max(0.0, next_t - time.monotonic()))  # the peer's own 100 Hz clock
            if not publishing.is_set():
                continue
            k += 1
            now = time.time_ns()
            hdr = Header_(Time_(now // 10**9, now % 10**9), "base")
            js.write(JointState_(hdr, ["c", "a", "b"], [3.0 * k, 1.0 * k, 2.0 * k], [0.3, 0.1, 0.2], []))
            img = np.zeros((H, W, 3), np.uint8)
            img[..., 0], img[..., 1], img[..., 2] = k % 256, 7, 200  # bgr8
            cam.write(Image_(hdr, H, W, "bgr8", 0, W * 3, img.tobytes()))

    threading.Thread(target=publish_loop, daemon=True).start()
    emit({"ready": True})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "pub off":
            publishing.clear()
        elif cmd == "pub on":
            publishing.set()
        emit({"ack": cmd})
        if cmd == "quit":
            os._exit(0)  # without waiting on DDS threads at interpreter exit


# --------------------------------------------------------------------------- test side


class Peer:
    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the script imports harness, beside tests/
        env = {**os.environ, "CYCLONEDDS_URI": LOOPBACK,
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(DOMAIN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.messages: queue.Queue[dict] = queue.Queue()
        self.acks: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.acks.get(timeout=20) == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            obj = json.loads(line)
            if "ready" in obj:
                self.acks.put("ready")
            elif "ack" in obj:
                self.acks.put(obj["ack"])
            else:
                self.messages.put(obj)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        assert self.acks.get(timeout=5) == cmd

    def close(self) -> None:
        try:
            self.send("quit")
        except Exception:  # already gone: nothing to stop
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def peer():
    os.environ["CYCLONEDDS_URI"] = LOOPBACK  # this process too: loopback only
    p = Peer()
    yield p
    p.close()


def options(**over):
    opts = {
        "backend": "dds", "domain_id": DOMAIN, "localhost_only": True, "rate_hz": 20, "max_age_s": 0.1,
        "identity": "test-arm",
        "observations": {
            "q": {"topic": "/joint_states", "type": "sensor_msgs/msg/JointState", "joints": ["a", "b"], "arrays": ["position", "velocity"]},
            "cam": {"topic": "/camera/image_raw", "type": "sensor_msgs/msg/Image", "height": H, "width": W},
        },
        "actions": [
            {"topic": "/arm/joint_trajectory", "type": "trajectory_msgs/msg/JointTrajectory", "joints": ["a", "b"], "time_from_start_s": 0.25},
            {"topic": "/base/cmd_vel", "type": "geometry_msgs/msg/Twist", "axes": ["linear.x", "angular.z"], "low": -0.5, "high": 0.5},
            {"topic": "/gripper/cmd", "type": "std_msgs/msg/Float64MultiArray", "size": 1, "low": 0, "high": 1},
        ],
        "reset_timeout_s": 5,
    }
    opts.update(over)
    return opts


@pytest.fixture
def make_robot(peer):
    from hal_drivers import registry

    import hal_drivers.ros2  # noqa: F401 - registers "ros2"

    robots = []

    def make(**over):
        r = registry.create("ros2", options(**over), name="arm")
        robots.append(r)
        return r

    yield make
    for r in robots:
        r.close()
    peer.send("pub on")


def _check_obs(obs):
    q, cam = obs["q"], obs["cam"]
    k = q[0]
    assert q.dtype == np.float32 and q.shape == (4,)
    assert q[1] == pytest.approx(2 * k) and q[2:] == pytest.approx([0.1, 0.2])  # joints picked by name, in config order
    assert cam.shape == (H, W, 3) and cam.dtype == np.uint8
    assert (cam[..., 0] == 200).all() and (cam[..., 1] == 7).all()  # bgr8 became rgb
    assert abs(int(cam[0, 0, 2]) - int(k) % 256) <= 2  # same publish tick as the joints (give or take)
    return k


def test_observations_arrive_at_the_control_rate(make_robot):
    robot = make_robot()
    d = robot.describe()
    assert d.driver == "ros2" and d.control_hz == 20 and d.action_shape == (5,)
    assert d.observation["cam"].shape == (H, W, 3) and d.observation["q"].shape == (4,)
    k0 = _check_obs(robot.reset())
    t0 = time.monotonic()
    ks, ts = [], [t0]
    for _ in range(10):
        res = robot.step(np.zeros(5, np.float32))
        ts.append(time.monotonic())
        assert "stale" not in res.info and robot.state == "running"
        ks.append(_check_obs(res.observation))
    elapsed = ts[-1] - t0
    # 10 ticks at 20 Hz (idle: 0.5 s); the lower bound guards the rate, the upper one only a stall (3x, for
    # a loaded 2-core box): a slow tick is caught by the per-tick message count below
    assert 0.45 <= elapsed <= 1.5, elapsed
    steps, gaps = np.diff([k0, *ks]), np.diff(ts)
    assert (steps >= 0).all(), ks  # never an older message than the tick before
    # A newer message at every tick, at the control rate. A tick that came late (a loaded machine) is followed
    # by one on the original schedule, possibly at once, with nothing newer published in between: those are not
    # judged; a paced tick (>= 4 of the peer's 10 ms periods after the one before) must see a newer message.
    paced = gaps >= 0.04
    assert paced.sum() >= 5, gaps  # most ticks are paced, even loaded
    assert (steps[paced] > 0).all(), (ks, gaps.round(3))
    assert 2 <= np.median(steps) <= 8  # ~5 peer messages (100 Hz) per 50 ms tick


def test_actions_are_ros2_messages_on_the_wire(make_robot, peer):
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    robot = make_robot()
    robot.reset()
    while not peer.messages.empty():
        peer.messages.get_nowait()
    robot.step(np.array([0.25, -3.0, 0.1, 0.9, 0.7], np.float32))  # -3 and 0.9 are clamped
    got = {}
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        m = peer.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        got[m["topic"]] = m
    assert set(got) == set(ACTION_TOPICS)
    pkgs = {"JointTrajectory_": "trajectory_msgs", "Twist_": "geometry_msgs", "Float64MultiArray_": "std_msgs"}
    for topic, short in ACTION_TOPICS.items():
        assert got[topic]["type_name"] == f"{pkgs[short]}::msg::dds_::{short}"
    traj = ts.deserialize_cdr(bytes.fromhex(got["/arm/joint_trajectory"]["cdr"]), "trajectory_msgs/msg/JointTrajectory")
    assert traj.joint_names == ["a", "b"] and len(traj.points) == 1
    assert traj.points[0].positions.tolist() == pytest.approx([0.25, -1.0])
    assert (traj.points[0].time_from_start.sec, traj.points[0].time_from_start.nanosec) == (0, 250_000_000)
    twist = ts.deserialize_cdr(bytes.fromhex(got["/base/cmd_vel"]["cdr"]), "geometry_msgs/msg/Twist")
    assert (twist.linear.x, twist.angular.z) == pytest.approx((0.1, 0.5))
    assert (twist.linear.y, twist.linear.z, twist.angular.x, twist.angular.y) == (0, 0, 0, 0)
    grip = ts.deserialize_cdr(bytes.fromhex(got["/gripper/cmd"]["cdr"]), "std_msgs/msg/Float64MultiArray")
    assert grip.data.tolist() == pytest.approx([0.7])


def test_stale_topics_are_flagged_not_fatal(make_robot, peer):
    robot = make_robot(on_stale="flag")
    robot.reset()
    peer.send("pub off")
    res = None
    for _ in range(6):  # 0.3 s: past max_age_s = 0.1
        res = robot.step(np.zeros(5, np.float32))
    assert set(res.info["stale"]) == {"q", "cam"}
    assert "/joint_states" in res.info["stale"]["q"] and "old" in res.info["stale"]["q"]
    assert robot.state == "stale" and "stale: " in res.info["ros2_status"]
    assert not res.truncated and robot.status()["flagged_steps"] >= 1
    _check_obs(res.observation)  # the last good values, not garbage
    peer.send("pub on")
    for _ in range(4):
        res = robot.step(np.zeros(5, np.float32))
    assert "stale" not in res.info and robot.state == "running"


def test_stale_topics_pause_then_resume_truncating_the_episode(make_robot, peer):
    robot = make_robot(on_stale="pause", pause_timeout_s=5)
    robot.reset()
    peer.send("pub off")
    threading.Timer(0.5, peer.send, ["pub on"]).start()
    t0 = time.monotonic()
    res = robot.step(np.zeros(5, np.float32))
    while not res.truncated:  # the first ticks can still be fresh
        res = robot.step(np.zeros(5, np.float32))
    # paused until the peer resumes at 0.5 s (idle: ~0.55 s); < 3 s is >5x, for a loaded 2-core box,
    # and still well under pause_timeout_s = 5, so a pause that only ended by timing out fails
    assert 0.3 <= time.monotonic() - t0 < 3
    assert res.info["paused_s"] > 0.1 and "q" in res.info["paused_for"]
    assert "stale" not in res.info and robot.state == "running"
    assert robot.status()["pauses"] == 1
    _check_obs(res.observation)


def test_pause_gives_up_after_its_timeout_with_a_clear_status(make_robot, peer):
    robot = make_robot(on_stale="pause", pause_timeout_s=0.4, reset_timeout_s=0.3)
    robot.reset()
    peer.send("pub off")
    res = robot.step(np.zeros(5, np.float32))
    while not res.truncated:
        res = robot.step(np.zeros(5, np.float32))
    assert set(res.info["stale"]) == {"q", "cam"}
    assert robot.state == "paused" and robot.status()["pause_timeouts"] == 1
    from hal_drivers.ros2 import Ros2Unavailable

    with pytest.raises(Ros2Unavailable, match=r"reset_timeout_s.*/joint_states"):
        robot.reset()  # still silent: the next episode does not start on stale data


def test_missing_or_unusable_topics_are_named(make_robot):
    from hal_drivers.ros2 import Ros2Unavailable

    obs = options()["observations"]
    robot = make_robot(reset_timeout_s=0.5, observations={
        **obs,
        "wrist": {"topic": "/wrist/image", "type": "sensor_msgs/msg/CompressedImage", "height": 8, "width": 8},
        "cam": {**obs["cam"], "height": 10},
    })
    with pytest.raises(Ros2Unavailable) as ei:
        robot.reset()
    msg = ei.value.message
    assert "no message yet on /wrist/image" in msg and "expected 64x10" in msg and "q:" not in msg
    assert robot.state == "waiting"


@pytest.mark.parametrize(
    "over, key",
    [
        ({"observations": {"q": {"topic": "/joint states", "type": "sensor_msgs/msg/JointState", "joints": ["a"]}}}, "robot.options.observations.q.topic"),
        ({"observations": {"q": {"topic": "/js", "type": "sensor_msgs/msg/Nope", "joints": ["a"]}}}, "robot.options.observations.q.type"),
        ({"observations": {"q": {"topic": "/js", "type": "sensor_msgs/msg/JointState"}}}, "robot.options.observations.q"),
        ({"actions": [{"topic": "/c", "type": "std_msgs/msg/Float64MultiArray", "size": 2, "low": [0, 0, 0]}]}, "robot.options.actions.0"),
        ({"backend": "zenoh"}, "robot.options.backend"),
        ({"on_stale": "panic"}, "robot.options.on_stale"),
        ({"bogus": 1}, "robot.options.bogus"),
    ],
)
def test_bad_config_names_the_key(over, key):
    from hal_drivers import registry
    from shared.errors import ConfigError

    import hal_drivers.ros2  # noqa: F401

    with pytest.raises(ConfigError) as ei:
        registry.create("ros2", options(**over))
    assert ei.value.message.startswith(key + ":"), ei.value.message


if __name__ == "__main__":
    _peer(int(sys.argv[1]))
