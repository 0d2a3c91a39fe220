"""Operator commands on the link (learner -> robot): the Command message, the hello feature
that offers them, and every refusal, through the two sans-I/O connection ends."""

from __future__ import annotations

import math

import pytest

from hal_drivers.teleop.base import EVENTS
from harness.protocol import open_link, raw_frame
from shared.errors import InvalidState, ProtocolError
from shared.protocol import (CloudConnection, Command, EdgeConnection, Hello, Limits, MsgType, State, commands, decode_frame,
                             encode_frame)

SPEC = {"fields": {}, "action_dim": 1}


def frame(type_: int, meta: dict) -> bytes:
    return raw_frame(type_, meta)


def link(features: tuple[str, ...] = (commands.FEATURE,)) -> tuple[EdgeConnection, CloudConnection]:
    return open_link(SPEC, features)


def refusal(fn, *args) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        fn(*args)
    assert e.value.code == "bad_meta"
    return e.value


VALID = [("pause", True), ("pause", False), ("start_episode", None), ("stop_episode", None), ("label", "success"),
         ("label", "failure"), ("label", "reset"), ("reward", 1.5), ("reward", -2), ("reward", 0)]


@pytest.mark.parametrize("kind,value", VALID)
def test_each_command_goes_from_the_learner_to_the_robot(kind, value):
    edge, cloud = link()
    msg = edge.receive(cloud.command(kind, value))
    assert msg == Command(kind, value) and isinstance(msg, Command)
    assert msg.TYPE is MsgType.COMMAND == 13
    if kind == "reward":
        assert isinstance(msg.value, float)
    assert edge.state is State.OPEN


def test_a_command_without_a_value_field_parses_for_kinds_that_take_none():
    edge, _ = link()
    assert edge.receive(frame(MsgType.COMMAND, {"kind": "stop_episode"})) == Command("stop_episode", None)


@pytest.mark.parametrize("meta,words", [
    ({"value": True}, "lacks field 'kind'"),
    ({"kind": 3, "value": True}, "command.kind must be str, got int"),
    ({"kind": "fly", "value": True}, "command.kind 'fly' is not one of pause, start_episode, stop_episode, label, reward"),
    ({"kind": "intervention", "value": True}, "is not one of"),  # a ROS 2 command, not a remote one
    ({"kind": "pause"}, "command.value of pause must be bool"),
    ({"kind": "pause", "value": 1}, "command.value of pause must be bool (true pauses, false resumes), got int"),
    ({"kind": "pause", "value": "true"}, "got str"),
    ({"kind": "start_episode", "value": True}, "command.value: start_episode takes no value, got bool"),
    ({"kind": "stop_episode", "value": 0}, "stop_episode takes no value"),
    ({"kind": "label", "value": "win"}, "command.value of label must be one of success, failure, reset, got 'win'"),
    ({"kind": "label", "value": None}, "got NoneType"),
    ({"kind": "label", "value": ["success"]}, "got list"),
    ({"kind": "reward", "value": True}, "command.value of reward must be a finite number, got bool"),
    ({"kind": "reward", "value": "1"}, "got str"),
    ({"kind": "reward", "value": None}, "got NoneType"),
    ({"kind": "reward", "value": math.nan}, "got nan"),
    ({"kind": "reward", "value": math.inf}, "got inf"),
    ({"kind": "reward", "value": -math.inf}, "got -inf"),
])
def test_the_robot_refuses_a_malformed_command_naming_the_field(meta, words):
    edge, _ = link()
    assert words in refusal(edge.receive, frame(MsgType.COMMAND, meta)).message


def test_a_huge_kind_is_cut_in_the_message():
    e = refusal(commands.check, "x" * 10_000, None)
    assert len(e.message) < 200


def test_an_integer_past_float_range_is_not_a_finite_reward():
    assert commands.check("reward", 2**64 - 1) == float(2**64 - 1)  # msgpack's largest: a float can hold it
    assert "got inf" in refusal(commands.check, "reward", 10**400).message  # JSON's are unbounded


@pytest.mark.parametrize("kind,value", [("fly", None), ("pause", None), ("label", "won"), ("reward", math.nan)])
def test_the_learner_cannot_encode_a_malformed_command(kind, value):
    _, cloud = link()
    refusal(cloud.command, kind, value)
    assert cloud.state is State.OPEN


def test_a_robot_that_did_not_offer_commands_gets_none():
    """An agent from before commands (or one whose site turned them off) sends no feature: the
    learner end will not encode a command for it, since the older robot's decoder meets type 13
    as unknown_type and drops its link."""
    _, cloud = link(features=())
    assert not cloud.takes_commands
    with pytest.raises(InvalidState, match="did not offer commands"):
        cloud.command("pause", True)
    assert cloud.state is State.OPEN, "local misuse: the link is untouched"


def test_an_older_robots_hello_without_features_parses_and_offers_nothing():
    cloud = CloudConnection()
    cloud.challenge()
    meta = Hello("arm-1", (1,), SPEC).meta()
    del meta["features"]  # what an agent from before this change sends
    assert cloud.receive(encode_frame(MsgType.HELLO, meta)) == Hello("arm-1", (1,), SPEC)
    assert not cloud.takes_commands


def test_the_feature_travels_in_the_hello():
    _, cloud = link()
    assert cloud.takes_commands and cloud.hello_msg is not None
    assert cloud.hello_msg.features == (commands.FEATURE,)
    _, cloud = link(features=("something_newer", commands.FEATURE))
    assert cloud.takes_commands


@pytest.mark.parametrize("features", ["commands", [1], ["x" * 33], ["f"] * 17, {"commands": 1}])
def test_a_malformed_features_list_is_refused(features):
    cloud = CloudConnection()
    cloud.challenge()
    meta = {**Hello("arm-1", (1,), SPEC).meta(), "features": features}
    assert "hello.features" in refusal(cloud.receive, encode_frame(MsgType.HELLO, meta)).message


def test_commands_need_an_open_link():
    edge, cloud = EdgeConnection("arm-1", SPEC, [], features=(commands.FEATURE,)), CloudConnection()
    edge.receive(cloud.challenge())
    with pytest.raises(InvalidState):
        cloud.command("pause", True)  # no hello yet
    cloud.receive(edge.hello(policy_version=0))
    with pytest.raises(InvalidState):
        cloud.command("pause", True)  # hello taken, welcome not sent
    with pytest.raises(ProtocolError) as e:
        edge.receive(encode_frame(MsgType.COMMAND, Command("pause", True).meta()))  # the robot waits for its welcome
    assert e.value.code == "bad_state"


def test_the_learner_refuses_a_command_from_a_robot():
    _, cloud = link()
    with pytest.raises(ProtocolError) as e:
        cloud.receive(encode_frame(MsgType.COMMAND, Command("pause", True).meta()))
    assert e.value.code == "bad_state"


def test_command_frames_round_trip_through_the_framing():
    data = encode_frame(MsgType.COMMAND, Command("label", "success").meta())
    assert Command.parse(decode_frame(data, Limits())) == Command("label", "success")


def test_labels_are_the_teleop_episode_events():
    """shared/ may not import hal_drivers: the two lists are kept equal here."""
    assert commands.LABELS == EVENTS
