"""Behaviour tests for link protocol v1: framing, messages, the two sans-I/O state machines."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import FleetError, InvalidState, ProtocolError
from shared.protocol import (
    ActChunk, ActRequest,
    FRAME_VERSION,
    PROTOCOL_VERSIONS,
    Ack,
    Challenge,
    Chunk,
    CloudConnection,
    Command,
    EdgeConnection,
    Hello,
    Limits,
    Lost,
    MsgType,
    Policy,
    Reject,
    State,
    Status,
    TunnelClose,
    TunnelData,
    TunnelOpen,
    Welcome,
    decode_frame,
    encode_frame,
)
from shared.schema import EpisodeSpec, FieldSpec

SPEC = EpisodeSpec(
    {"joints": FieldSpec((7,)), "cam": FieldSpec((8, 8, 3), "uint8", codec="png")},
    action_dim=4,
    action_low=(-1.0,) * 4,
    action_high=(1.0,) * 4,
).to_dict()
UNITS = [{"name": "arm", "driver": "mujoco_fetch"}]
HEADER = struct.Struct(">2sBBII")


def frame(type_: int, meta, body: bytes = b"", *, magic: bytes = b"FL", version: int = FRAME_VERSION) -> bytes:
    """A frame built by hand, so tests can send what a well-behaved peer never would."""
    packed = meta if isinstance(meta, bytes) else msgpack.packb(meta, use_bin_type=True)
    return HEADER.pack(magic, version, int(type_), len(packed), len(body)) + packed + body


def wire(msg) -> bytes:
    return encode_frame(msg.TYPE, msg.meta(), getattr(msg, "body", b""))


def handshake(cloud_limits: Limits | None = None, edge_limits: Limits | None = None):
    edge = EdgeConnection("robot-1", SPEC, UNITS, edge_limits)
    cloud = CloudConnection(cloud_limits)
    edge.receive(cloud.challenge())
    cloud.receive(edge.hello(policy_version=0))
    edge.receive(cloud.welcome("run-1", acked_seq=0, policy_version=0))
    assert edge.state is State.OPEN and cloud.state is State.OPEN
    return edge, cloud


def challenged(limits: Limits | None = None) -> CloudConnection:
    """A cloud end that has sent its challenge and now waits for the hello."""
    cloud = CloudConnection(limits)
    cloud.challenge()
    assert cloud.state is State.CHALLENGED
    return cloud


def edge_challenged(robot_id: str = "robot-1", units=()) -> EdgeConnection:
    """An edge end that has taken a challenge and not yet said hello."""
    edge = EdgeConnection(robot_id, SPEC, list(units))
    edge.receive(CloudConnection().challenge())
    assert edge.state is State.CHALLENGED
    return edge


def edge_waiting() -> EdgeConnection:
    """An edge end that has answered a challenge with its hello and waits for the welcome."""
    edge = edge_challenged()
    edge.hello(0)
    assert edge.state is State.HANDSHAKE
    return edge


def code_of(fn, *args) -> str:
    """The code of the ProtocolError ``fn`` raises: a fault of the peer."""
    with pytest.raises(ProtocolError) as ei:
        fn(*args)
    return ei.value.code


def misuse_of(fn, *args) -> str:
    """The code of the InvalidState ``fn`` raises: misuse by this side, never a ProtocolError."""
    with pytest.raises(InvalidState) as ei:
        fn(*args)
    assert not isinstance(ei.value, ProtocolError)
    return ei.value.code


# ------------------------------------------------------------------ handshake


def test_full_handshake_and_traffic_through_bytes():
    edge = EdgeConnection("robot-1", SPEC, UNITS)
    cloud = CloudConnection()
    assert edge.state is State.START and cloud.state is State.START

    challenge_bytes = cloud.challenge()
    assert isinstance(challenge_bytes, bytes) and challenge_bytes[:2] == b"FL"
    assert cloud.state is State.CHALLENGED
    challenge = edge.receive(challenge_bytes)
    assert isinstance(challenge, Challenge)
    assert challenge.nonce == cloud.server_nonce and challenge.nonce
    assert edge.state is State.CHALLENGED

    hello_bytes = edge.hello(policy_version=7, agent_version="0.1.0")
    assert isinstance(hello_bytes, bytes) and hello_bytes[:2] == b"FL"
    assert edge.state is State.HANDSHAKE

    hello = cloud.receive(hello_bytes)
    assert isinstance(hello, Hello)
    assert hello.robot_id == "robot-1"
    assert hello.spec == SPEC
    assert EpisodeSpec.from_dict(hello.spec).to_dict() == SPEC
    assert hello.units == UNITS
    assert hello.policy_version == 7
    assert hello.agent_version == "0.1.0"
    assert tuple(hello.versions) == tuple(PROTOCOL_VERSIONS)
    assert hello.client_nonce and hello.proof == ""  # no credential: an unenrolled robot proves nothing
    assert cloud.state is State.HANDSHAKE
    assert cloud.robot_id == "robot-1"
    assert cloud.version == max(PROTOCOL_VERSIONS)

    welcome = edge.receive(cloud.welcome("run-42", acked_seq=12, policy_version=3))
    assert isinstance(welcome, Welcome)
    assert (welcome.version, welcome.run_id, welcome.acked_seq, welcome.policy_version) == (
        cloud.version, "run-42", 12, 3,
    )
    assert edge.state is State.OPEN and cloud.state is State.OPEN
    assert edge.version == cloud.version

    body = b"\x28\xb5\x2f\xfd-not-really-zstd" * 10
    chunk = cloud.receive(edge.chunk(13, "ep-1", rows=50, raw_size=4096, crc32=0xDEADBEEF, body=body))
    assert chunk == Chunk(13, "ep-1", 50, 4096, 0xDEADBEEF, body)

    status = cloud.receive(edge.status({"hz": 24.9, "spooled": 3, "mode": "policy", "estop": False}))
    assert status == Status({"hz": 24.9, "spooled": 3, "mode": "policy", "estop": False})

    assert edge.receive(cloud.ack(13)) == Ack(13)
    weights = bytes(range(256)) * 4
    assert edge.receive(cloud.policy(4, "ab" * 32, len(weights), 0, weights)) == Policy(4, "ab" * 32, len(weights), 0, weights)
    part = cloud.policy(5, "cd" * 32, len(weights), 100, weights[100:300])
    assert edge.receive(part) == Policy(5, "cd" * 32, len(weights), 100, weights[100:300])
    assert edge.state is State.OPEN and cloud.state is State.OPEN


def test_max_inflight_is_the_smaller_of_both_sides():
    edge, _ = handshake(cloud_limits=Limits(max_inflight_chunks=4), edge_limits=Limits(max_inflight_chunks=16))
    assert edge.max_inflight == 4
    edge, _ = handshake(cloud_limits=Limits(max_inflight_chunks=64), edge_limits=Limits(max_inflight_chunks=8))
    assert edge.max_inflight == 8


# --------------------------------------------------------- version negotiation


def hello_meta(**over):
    meta = {"robot_id": "robot-1", "versions": list(PROTOCOL_VERSIONS), "spec": SPEC, "units": [], "policy_version": 0}
    meta.update(over)
    return meta


def test_cloud_rejects_hello_sharing_no_protocol_version():
    foreign = [max(PROTOCOL_VERSIONS) + 1, max(PROTOCOL_VERSIONS) + 7]
    cloud = challenged()
    assert code_of(cloud.receive, frame(MsgType.HELLO, hello_meta(versions=foreign))) == "unsupported_version"
    assert cloud.state is not State.HANDSHAKE and cloud.state is not State.OPEN


def test_cloud_picks_the_highest_common_version():
    cloud = CloudConnection()
    challenge = cloud.challenge()
    offered = [max(PROTOCOL_VERSIONS) + 5, *PROTOCOL_VERSIONS, 0]
    cloud.receive(frame(MsgType.HELLO, hello_meta(versions=offered)))
    assert cloud.version == max(PROTOCOL_VERSIONS)
    welcome = EdgeConnection("robot-1", SPEC, [])
    welcome.receive(challenge)
    welcome.hello(0)
    assert welcome.receive(cloud.welcome("r", 0, 0)).version == max(PROTOCOL_VERSIONS)


def test_edge_refuses_a_welcome_with_a_version_it_did_not_offer():
    edge = edge_waiting()
    bad = Welcome(max(PROTOCOL_VERSIONS) + 1, "run", 0, 0, 4)
    assert code_of(edge.receive, wire(bad)) == "unsupported_version"
    assert edge.state is not State.OPEN


@pytest.mark.parametrize("version", [0, 2, 255])
def test_frame_version_byte_other_than_1_is_unsupported(version):
    good = wire(Ack(1))
    bad = good[:2] + bytes([version]) + good[3:]
    assert code_of(decode_frame, bad, Limits()) == "unsupported_version"
    assert code_of(challenged().receive, frame(MsgType.HELLO, hello_meta(), version=version)) == "unsupported_version"


# ------------------------------------------------------------ round trips


ALL_MESSAGES = [
    Hello("robot-1", (1, 2), SPEC, [{"name": "arm"}], 5, "1.2.3"),
    Hello("r", (1,), {}, [], 0, ""),
    Hello("robot-2", (1,), SPEC, [], 0, "", "c1" * 16, "ab" * 32),
    Hello("robot-3", (1,), SPEC, [], 2, "", "c1" * 16, "", 4, 1024),
    Welcome(1, "run-x", 99, 3, 8),
    Welcome(1, "run-y", 0, 0, 1, "5e" * 32),
    Chunk(1, "ep-0", 1, 10, 0, b""),
    Chunk(2**40, "ep-9", 10_000, 2**33, 0xFFFFFFFF, b"\x00\xff" * 1000),
    Ack(0),
    Ack(2**62),
    Policy(7, "0" * 64, 700, 0, b"weights" * 100),
    Policy(0, "f" * 64, 0, 0, b""),
    Policy(3, "a" * 64, 1000, 500, b"x" * 100),
    Status({"a": 1, "b": 2.5, "c": "x", "d": True}),
    Status({}),
    Reject("unsupported_version", "go away"),
    Lost(3, 9, "bad sector"),
    Lost(1, 1, ""),
    Challenge("0f" * 16),
    Challenge("n" * 64),
    TunnelOpen(1, 22),
    TunnelOpen(2**31, 65535),
    TunnelData(7, b"\x00ssh bytes\xff"),
    TunnelData(0, b""),
    TunnelClose(7, "connection refused"),
    TunnelClose(1),
    Command("pause", True),
    Command("label", "success"),
    Command("reward", -0.5),
    Command("stop_episode"),
    Hello("robot-1", (1,), SPEC, UNITS, features=("commands",)),
    ActRequest(3, 17, {"pos": b"\x00" * 12}, 2),
    ActChunk(3, 17, 2, 2, 1, b"\x00" * 8),
    ActChunk(4, 0, 0, code="rate_limited", message="slow down"),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg):
    data = wire(msg)
    f = decode_frame(data, Limits())
    assert f.type is msg.TYPE
    assert type(msg).parse(f) == msg


def test_every_message_type_is_covered():
    assert {m.TYPE for m in ALL_MESSAGES} == set(MsgType)


def test_encode_frame_layout():
    data = encode_frame(MsgType.ACK, {"seq": 5}, b"xyz")
    magic, version, type_, meta_len, body_len = HEADER.unpack_from(data)
    assert (magic, version, type_) == (b"FL", 1, int(MsgType.ACK))
    assert body_len == 3 and data.endswith(b"xyz")
    assert msgpack.unpackb(data[12 : 12 + meta_len]) == {"seq": 5}
    assert len(data) == 12 + meta_len + body_len


# ------------------------------------------------------------- state rules


def test_chunk_and_status_before_welcome_are_local_misuse():
    edge = EdgeConnection("robot-1", SPEC, [])
    assert misuse_of(edge.chunk, 1, "ep", 1, 1, 0, b"x") == "invalid_state"
    assert misuse_of(edge.status, {"a": 1}) == "invalid_state"
    edge.receive(CloudConnection().challenge())
    assert misuse_of(edge.chunk, 1, "ep", 1, 1, 0, b"x") == "invalid_state"
    assert misuse_of(edge.status, {"a": 1}) == "invalid_state"
    edge.hello(0)
    assert misuse_of(edge.chunk, 1, "ep", 1, 1, 0, b"x") == "invalid_state"
    assert misuse_of(edge.status, {"a": 1}) == "invalid_state"


def test_lost_report_flows_robot_to_cloud_only_when_open():
    edge = EdgeConnection("robot-1", SPEC, [])
    assert misuse_of(edge.lost, 1, 2, "disk") == "invalid_state"
    edge, cloud = handshake()
    assert cloud.receive(edge.lost(4, 6, "crc mismatch")) == Lost(4, 6, "crc mismatch")
    assert cloud.state is State.OPEN


@pytest.mark.parametrize("first, last", [(0, 0), (0, 5), (5, 4), (-1, 3)])
def test_lost_range_must_be_non_empty_and_start_at_1(first, last):
    err = pytest.raises(ProtocolError, _parse, MsgType.LOST, {"first": first, "last": last, "reason": "r"}).value
    assert err.code == "bad_meta"


def test_hello_is_sent_once():
    edge = edge_challenged()
    edge.hello(0)
    assert misuse_of(edge.hello, 0) == "invalid_state"


def test_hello_waits_for_the_challenge():
    edge = EdgeConnection("robot-1", SPEC, [])
    assert misuse_of(edge.hello, 0) == "invalid_state"
    assert edge.state is State.START
    edge.receive(CloudConnection().challenge())
    assert isinstance(edge.hello(0), bytes)
    edge, _ = handshake()
    assert misuse_of(edge.hello, 0) == "invalid_state"


def test_challenge_opens_the_link_once():
    cloud = CloudConnection()
    cloud.challenge()
    assert misuse_of(cloud.challenge) == "invalid_state"
    _, cloud = handshake()
    assert misuse_of(cloud.challenge) == "invalid_state"


def test_every_challenge_carries_a_fresh_nonce():
    nonces = {CloudConnection().challenge() for _ in range(20)}
    assert len(nonces) == 20


@pytest.mark.parametrize(
    "data",
    [frame(MsgType.HELLO, hello_meta()), wire(Chunk(1, "e", 1, 1, 0, b"x")), wire(Status({})), b"garbage"],
    ids=["hello", "chunk", "status", "garbage"],
)
def test_cloud_receives_nothing_before_its_challenge(data):
    cloud = CloudConnection()
    assert misuse_of(cloud.receive, data) == "invalid_state"
    assert cloud.state is State.START


def test_cloud_refuses_a_second_hello_in_handshake_and_open():
    edge = EdgeConnection("robot-1", SPEC, [])
    cloud = CloudConnection()
    edge.receive(cloud.challenge())
    hello = edge.hello(0)
    cloud.receive(hello)
    assert code_of(cloud.receive, hello) == "bad_state"
    edge, cloud = handshake()
    assert code_of(cloud.receive, frame(MsgType.HELLO, hello_meta())) == "bad_state"


def test_cloud_refuses_anything_but_hello_first():
    for msg in (Chunk(1, "e", 1, 1, 0, b"x"), Status({}), Ack(1), Welcome(1, "r", 0, 0, 1), Challenge("ab" * 16),
                Lost(1, 1, "x"), TunnelData(1, b"x"), TunnelClose(1), TunnelOpen(1, 22)):
        cloud = challenged()
        assert code_of(cloud.receive, wire(msg)) == "bad_state"
        assert cloud.state is State.CHALLENGED


def test_cloud_refuses_chunk_before_it_sent_welcome():
    cloud = challenged()
    cloud.receive(frame(MsgType.HELLO, hello_meta()))
    assert code_of(cloud.receive, wire(Chunk(1, "e", 1, 1, 0, b"x"))) == "bad_state"


@pytest.mark.parametrize(
    "msg", [Ack(1), Policy(1, "ab" * 32, 1, 0, b"y"), Welcome(1, "r", 0, 0, 1), Challenge("ab" * 16), TunnelOpen(1, 22),
            Command("pause", True)],
    ids=lambda m: type(m).__name__,
)
def test_cloud_refuses_cloud_to_robot_messages(msg):
    _, cloud = handshake()
    assert code_of(cloud.receive, wire(msg)) == "bad_state"


@pytest.mark.parametrize(
    "msg",
    [Chunk(1, "e", 1, 1, 0, b"x"), Status({}), Lost(1, 2, "x"), Hello("r", (1,), {}, [], 0, ""), Welcome(1, "r", 0, 0, 1),
     Challenge("ab" * 16)],
    ids=lambda m: type(m).__name__,
)
def test_edge_refuses_robot_to_cloud_messages_and_second_welcome(msg):
    edge, _ = handshake()
    assert code_of(edge.receive, wire(msg)) == "bad_state"


def test_tunnel_messages_flow_both_ways_on_an_open_link():
    edge, cloud = handshake()
    assert edge.receive(cloud.tunnel_open(3, 22)) == TunnelOpen(3, 22)
    assert edge.receive(cloud.tunnel_data(3, b"to robot")) == TunnelData(3, b"to robot")
    assert cloud.receive(edge.tunnel_data(3, b"from robot")) == TunnelData(3, b"from robot")
    assert cloud.receive(edge.tunnel_close(3, "eof")) == TunnelClose(3, "eof")
    assert edge.receive(cloud.tunnel_close(3)) == TunnelClose(3, "")
    assert edge.state is State.OPEN and cloud.state is State.OPEN


def test_tunnel_messages_need_an_open_link():
    edge, cloud = EdgeConnection("robot-1", SPEC, []), CloudConnection()
    for send in (lambda: cloud.tunnel_open(1, 22), lambda: cloud.tunnel_data(1, b"x"), lambda: cloud.tunnel_close(1),
                 lambda: edge.tunnel_data(1, b"x"), lambda: edge.tunnel_close(1)):
        assert misuse_of(send) == "invalid_state"
    edge.receive(cloud.challenge())
    cloud.receive(edge.hello(0))
    for send in (lambda: cloud.tunnel_open(1, 22), lambda: edge.tunnel_data(1, b"x")):
        assert misuse_of(send) == "invalid_state"
    assert code_of(edge.receive, wire(TunnelOpen(1, 22))) == "bad_state"
    assert code_of(cloud.receive, wire(TunnelData(1, b"x"))) == "bad_state"


def test_edge_expects_welcome_during_handshake():
    edge = edge_waiting()
    assert code_of(edge.receive, wire(Ack(1))) == "bad_state"
    assert code_of(edge.receive, wire(Challenge("ab" * 16))) == "bad_state"
    assert edge.state is State.HANDSHAKE


def test_welcome_answers_a_hello():
    assert misuse_of(CloudConnection().welcome, "run", 0, 0) == "invalid_state"
    assert misuse_of(challenged().welcome, "run", 0, 0) == "invalid_state"
    _, cloud = handshake()
    assert misuse_of(cloud.welcome, "run", 0, 0) == "invalid_state"


@pytest.mark.parametrize(
    "msg", [Ack(1), Welcome(1, "run", 0, 0, 4), Policy(1, "ab" * 32, 1, 0, b"y"), TunnelOpen(1, 22), Hello("r", (1,), {}, [], 0, "")],
    ids=lambda m: type(m).__name__,
)
def test_edge_refuses_messages_before_it_said_hello(msg):
    edge = EdgeConnection("robot-1", SPEC, [])
    assert code_of(edge.receive, wire(msg)) == "bad_state"  # only a challenge (or a reject) opens the link
    assert edge.state is State.START
    edge = edge_challenged()
    assert misuse_of(edge.receive, wire(msg)) == "invalid_state"  # challenged: nothing is due before our hello
    assert edge.state is State.CHALLENGED


@pytest.mark.parametrize("msg", [Challenge("ab" * 16), Reject("x", "y")], ids=lambda m: type(m).__name__)
def test_edge_takes_nothing_between_challenge_and_its_hello(msg):
    edge = edge_challenged()
    assert misuse_of(edge.receive, wire(msg)) == "invalid_state"
    assert edge.state is State.CHALLENGED


@pytest.mark.parametrize("which", ["ack", "policy"])
def test_cloud_cannot_send_ack_or_policy_before_welcome(which):
    cloud = CloudConnection()
    send = (lambda: cloud.ack(1)) if which == "ack" else (lambda: cloud.policy(1, "ab" * 32, 1, 0, b"y"))
    assert misuse_of(send) == "invalid_state"
    cloud.challenge()
    assert misuse_of(send) == "invalid_state"
    cloud.receive(frame(MsgType.HELLO, hello_meta()))
    assert misuse_of(send) == "invalid_state"


# ------------------------------------------------------------------ rejects


def test_reject_received_by_cloud_closes_the_connection():
    _, cloud = handshake()
    msg = cloud.receive(wire(Reject("shutdown", "robot going down")))
    assert msg == Reject("shutdown", "robot going down")
    assert cloud.state is State.CLOSED
    assert misuse_of(cloud.receive, wire(Status({}))) == "closed"


def test_reject_received_by_edge_during_handshake_closes_it():
    edge = EdgeConnection("robot-1", SPEC, [])
    cloud = CloudConnection()
    edge.receive(cloud.challenge())
    cloud.receive(edge.hello(0))
    data = cloud.reject("spec_mismatch", "spec differs")
    assert cloud.state is State.CLOSED
    msg = edge.receive(data)
    assert msg == Reject("spec_mismatch", "spec differs")
    assert edge.state is State.CLOSED
    assert misuse_of(edge.receive, wire(Ack(1))) == "closed"
    assert misuse_of(edge.chunk, 1, "ep", 1, 1, 0, b"") == "invalid_state"


def test_reject_instead_of_a_challenge_closes_the_edge():
    edge = EdgeConnection("robot-1", SPEC, [])
    msg = edge.receive(CloudConnection().reject("too_many_connections", "full"))
    assert msg == Reject("too_many_connections", "full")
    assert edge.state is State.CLOSED
    assert misuse_of(edge.hello, 0) == "invalid_state"
    assert misuse_of(edge.receive, CloudConnection().challenge()) == "closed"


def test_reject_received_by_cloud_while_it_waits_for_hello_closes_it():
    cloud = challenged()
    assert cloud.receive(wire(Reject("shutdown", "bye"))) == Reject("shutdown", "bye")
    assert cloud.state is State.CLOSED
    assert misuse_of(cloud.receive, frame(MsgType.HELLO, hello_meta())) == "closed"


def test_reject_received_by_edge_when_open_closes_it():
    edge, cloud = handshake()
    assert isinstance(edge.receive(cloud.reject("bye", "later")), Reject)
    assert edge.state is State.CLOSED
    assert misuse_of(edge.status, {}) == "invalid_state"
    assert misuse_of(cloud.receive, edge.reject("x", "y")) == "closed"


def test_reject_fields_are_capped():
    msg = Reject.parse(decode_frame(frame(MsgType.REJECT, {"code": "c" * 500, "message": "m" * 5000}), Limits()))
    assert len(msg.code) == 64 and len(msg.message) == 1024


# ------------------------------------------------------------------ limits


def test_frame_over_max_frame_bytes_is_refused_and_limit_is_inclusive():
    limits = Limits(max_frame_bytes=2048)
    edge, cloud = handshake(cloud_limits=limits)
    head = len(edge.chunk(1, "ep", 1, 1, 0, b""))
    exact = edge.chunk(1, "ep", 1, 1, 0, b"x" * (2048 - head))
    assert len(exact) == 2048
    assert isinstance(cloud.receive(exact), Chunk)
    over = edge.chunk(2, "ep", 1, 1, 0, b"x" * (2049 - head))
    assert code_of(cloud.receive, over) == "frame_too_large"
    assert code_of(decode_frame, over, limits) == "frame_too_large"


def test_meta_over_max_meta_bytes_is_refused():
    limits = Limits(max_meta_bytes=256)
    ok = encode_frame(MsgType.STATUS, {"values": {"k": "v" * 100}})
    assert decode_frame(ok, limits).meta == {"values": {"k": "v" * 100}}
    big = encode_frame(MsgType.STATUS, {"values": {"k": "v" * 300}})
    err = pytest.raises(ProtocolError, decode_frame, big, limits).value
    assert err.code == "frame_too_large" and "meta" in err.message


def test_meta_limit_is_checked_from_the_header_not_the_data():
    # A header that claims a huge meta is refused before the lengths are compared.
    data = HEADER.pack(b"FL", 1, int(MsgType.ACK), 1 << 30, 0) + b"\x80"
    assert code_of(decode_frame, data, Limits()) == "frame_too_large"


@pytest.mark.parametrize("cut", [0, 1, 5, 11])
def test_frame_shorter_than_header_is_truncated(cut):
    assert code_of(decode_frame, wire(Ack(1))[:cut], Limits()) == "truncated"


def test_frame_lengths_must_match_exactly():
    data = wire(Chunk(1, "ep", 1, 1, 0, b"body"))
    assert code_of(decode_frame, data[:-1], Limits()) == "truncated"
    assert code_of(decode_frame, data + b"\x00", Limits()) == "truncated"
    assert code_of(decode_frame, wire(Ack(1))[:12], Limits()) == "truncated"


def test_bad_magic():
    assert code_of(decode_frame, frame(MsgType.ACK, {"seq": 1}, magic=b"LF"), Limits()) == "bad_magic"
    assert code_of(challenged().receive, b"GET / HTTP/1.1\r\n\r\n") == "bad_magic"


@pytest.mark.parametrize("type_", [0, max(MsgType) + 1, 99, 255])
def test_unknown_message_type(type_):
    assert code_of(decode_frame, frame(type_, {"seq": 1}), Limits()) == "unknown_type"


@pytest.mark.parametrize(
    "meta",
    [
        msgpack.packb([1, 2, 3]),
        msgpack.packb("seq"),
        msgpack.packb(None),
        b"\xc1",  # never-used msgpack byte
        b"\x81\xa3seq",  # map missing its value
        msgpack.packb({1: 2}),  # non-string key
        msgpack.packb({"seq": 1}) + b"\x01",  # trailing data after the map
        b"",
    ],
)
def test_meta_must_be_a_msgpack_map(meta):
    assert code_of(decode_frame, frame(MsgType.ACK, meta), Limits()) == "bad_meta"


@pytest.mark.parametrize(
    "type_, meta, field",
    [
        (MsgType.ACK, {"seq": "1"}, "seq"),
        (MsgType.ACK, {"seq": 1.0}, "seq"),
        (MsgType.ACK, {}, "seq"),
        (MsgType.WELCOME, {"version": 1, "run_id": 5, "acked_seq": 0, "policy_version": 0, "max_inflight": 1}, "run_id"),
        (MsgType.WELCOME, {"version": 1, "run_id": "r", "acked_seq": 0, "policy_version": 0}, "max_inflight"),
        (MsgType.CHUNK, {"seq": 1, "episode_id": b"ep", "rows": 1, "raw_size": 1, "crc32": 0}, "episode_id"),
        (MsgType.CHUNK, {"seq": 1, "episode_id": "ep", "rows": [1], "raw_size": 1, "crc32": 0}, "rows"),
        (MsgType.CHUNK, {"seq": 1, "episode_id": "ep", "rows": 1, "raw_size": 1, "crc32": 2**32}, "crc32"),
        (MsgType.POLICY, {"version": 1, "sha256": 5, "size": 0}, "sha256"),
        (MsgType.POLICY, {"version": "1", "sha256": "0" * 64, "size": 0}, "version"),
        (MsgType.POLICY, {"version": 1, "sha256": "x", "size": 0}, "sha256"),
        (MsgType.POLICY, {"version": 1, "sha256": "0" * 64, "size": 0, "offset": -1}, "offset"),
        (MsgType.HELLO, {**hello_meta(), "partial_bytes": -1}, "partial_bytes"),
        (MsgType.STATUS, {"values": [1, 2]}, "values"),
        (MsgType.REJECT, {"code": "c"}, "message"),
        (MsgType.HELLO, {**hello_meta(), "spec": "not a map"}, "spec"),
        (MsgType.HELLO, {**hello_meta(), "units": {"a": 1}}, "units"),
        (MsgType.HELLO, {**hello_meta(), "policy_version": -1}, "policy_version"),
        (MsgType.HELLO, {k: v for k, v in hello_meta().items() if k != "robot_id"}, "robot_id"),
        (MsgType.HELLO, {**hello_meta(), "client_nonce": 5}, "client_nonce"),
        (MsgType.HELLO, {**hello_meta(), "proof": b"\x00" * 32}, "proof"),
        (MsgType.WELCOME, {"version": 1, "run_id": "r", "acked_seq": 0, "policy_version": 0, "max_inflight": 1,
                           "server_signature": 1}, "server_signature"),
        (MsgType.CHALLENGE, {}, "nonce"),
        (MsgType.CHALLENGE, {"nonce": "x" * 15}, "nonce"),
        (MsgType.CHALLENGE, {"nonce": "x" * 65}, "nonce"),
        (MsgType.TUNNEL_OPEN, {"stream": 1, "port": 65536}, "port"),
        (MsgType.TUNNEL_DATA, {"stream": -1}, "stream"),
        (MsgType.TUNNEL_CLOSE, {"stream": 1, "reason": 3}, "reason"),
    ],
)
def test_wrong_field_types_are_bad_meta_naming_the_field(type_, meta, field):
    with pytest.raises(ProtocolError) as ei:
        challenged().receive(frame(type_, meta)) if type_ is MsgType.HELLO else _parse(type_, meta)
    assert ei.value.code == "bad_meta"
    assert field in ei.value.message


def _parse(type_, meta, body=b""):
    from shared.protocol.messages import PARSERS

    return PARSERS[type_].parse(decode_frame(frame(type_, meta, body), Limits()))


@pytest.mark.parametrize("key", ["seq", "rows", "raw_size", "crc32"])
def test_bool_where_int_expected_is_bad_meta(key):
    meta = {"seq": 1, "episode_id": "ep", "rows": 1, "raw_size": 1, "crc32": 0, key: True}
    err = pytest.raises(ProtocolError, _parse, MsgType.CHUNK, meta).value
    assert err.code == "bad_meta" and key in err.message
    err = pytest.raises(ProtocolError, _parse, MsgType.ACK, {"seq": False}).value
    assert err.code == "bad_meta"


def test_negative_and_zero_seq():
    base = {"episode_id": "ep", "rows": 1, "raw_size": 1, "crc32": 0}
    for seq in (-1, -(2**63)):
        assert pytest.raises(ProtocolError, _parse, MsgType.CHUNK, {**base, "seq": seq}).value.code == "bad_meta"
        assert pytest.raises(ProtocolError, _parse, MsgType.ACK, {"seq": seq}).value.code == "bad_meta"
    err = pytest.raises(ProtocolError, _parse, MsgType.CHUNK, {**base, "seq": 0}).value
    assert err.code == "bad_meta" and "seq" in err.message
    assert _parse(MsgType.CHUNK, {**base, "seq": 1}).seq == 1
    # uint64 above the signed range is out of range too
    assert pytest.raises(ProtocolError, _parse, MsgType.ACK, {"seq": 2**64 - 1}).value.code == "bad_meta"


@pytest.mark.parametrize(
    "robot_id",
    ["", "a b", "a/b", "../x", "robot\n", "robot\x00", "r;rm -rf", "x" * 129, "tab\there", "emoji\U0001f916"],
)
def test_hello_robot_id_with_bad_characters_is_refused(robot_id):
    err = pytest.raises(ProtocolError, challenged().receive, frame(MsgType.HELLO, hello_meta(robot_id=robot_id))).value
    assert err.code == "bad_meta" and "robot_id" in err.message


@pytest.mark.parametrize("robot_id", ["a", "arm-01.lab_A", "x" * 128])
def test_hello_accepts_valid_robot_ids(robot_id):
    cloud = challenged()
    assert cloud.receive(frame(MsgType.HELLO, hello_meta(robot_id=robot_id))).robot_id == robot_id


@pytest.mark.parametrize("robot_id", ["r\u043ebot", "\uff52obot", "robot\u00b2"])
def test_hello_robot_id_is_ascii_like_config(robot_id):
    err = pytest.raises(ProtocolError, challenged().receive, frame(MsgType.HELLO, hello_meta(robot_id=robot_id))).value
    assert err.code == "bad_meta"


@pytest.mark.parametrize("versions", [[], [True], ["1"], [1.0], list(range(17)), "1", 1])
def test_hello_versions_must_be_a_short_list_of_ints(versions):
    err = pytest.raises(ProtocolError, challenged().receive, frame(MsgType.HELLO, hello_meta(versions=versions))).value
    assert err.code == "bad_meta" and "versions" in err.message


def test_policy_part_must_fit_its_declared_size():
    edge, cloud = handshake()
    sha = "ab" * 32
    good = cloud.policy(3, sha, 5, 0, b"12345")
    meta_len = HEADER.unpack_from(good)[3]
    meta = msgpack.unpackb(good[12 : 12 + meta_len])
    assert meta["size"] == 5 and meta["offset"] == 0
    assert edge.receive(good) == Policy(3, sha, 5, 0, b"12345")
    lying = frame(MsgType.POLICY, {**meta, "size": 4}, b"12345")
    err = pytest.raises(ProtocolError, edge.receive, lying).value
    assert err.code == "truncated"
    past_end = frame(MsgType.POLICY, {**meta, "offset": 3}, b"12345")
    assert code_of(edge.receive, past_end) == "truncated"
    assert edge.receive(frame(MsgType.POLICY, {**meta, "offset": 2}, b"345")) == Policy(3, sha, 5, 2, b"345")
    assert code_of(edge.receive, frame(MsgType.POLICY, {"version": 3, "sha256": sha}, b"12345")) == "bad_meta"


def test_status_values_are_sanitised():
    values = {f"k{i}": i for i in range(100)}
    values.update({"nested": {"a": 1}, "list": [1], "long": "x" * 300, "ok": "fine"})
    st_ = _parse(MsgType.STATUS, {"values": values})
    assert len(st_.values) <= 64
    assert "nested" not in st_.values and "list" not in st_.values and "long" not in st_.values
    assert all(isinstance(v, (int, float, str, bool)) for v in st_.values.values())


def test_welcome_max_inflight_bounds():
    meta = {"version": 1, "run_id": "r", "acked_seq": 0, "policy_version": 0}
    assert _parse(MsgType.WELCOME, {**meta, "max_inflight": 0}).max_inflight == 1
    assert _parse(MsgType.WELCOME, {**meta, "max_inflight": 1 << 16}).max_inflight == 1 << 16
    assert pytest.raises(ProtocolError, _parse, MsgType.WELCOME, {**meta, "max_inflight": (1 << 16) + 1}).value.code == "bad_meta"


# ------------------------------------------------------------------- fuzzing

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

VALID_FRAMES = [wire(m) for m in ALL_MESSAGES] + [
    frame(MsgType.HELLO, hello_meta()),
    wire(Hello("robot-1", (1,), SPEC, UNITS, 3, "a")),
]


def feed_all(data: bytes) -> None:
    """Feed bytes to every receiving end; each must return a message or raise a FleetError."""
    from shared.protocol.messages import Message  # noqa: F401  (union type, for isinstance below)

    kinds = (Hello, Welcome, Chunk, Ack, Policy, Status, Reject, Lost, Challenge, TunnelOpen, TunnelData, TunnelClose,
             Command, ActRequest, ActChunk)
    receivers = [challenged().receive, EdgeConnection("robot-1", SPEC, []).receive]
    edge, cloud = handshake()
    receivers += [edge.receive, cloud.receive]
    receivers.append(edge_waiting().receive)
    for recv in receivers:
        try:
            out = recv(data)
        except FleetError:
            continue
        assert isinstance(out, kinds)


@settings(FUZZ, max_examples=400)
@given(st.binary(max_size=256) | st.binary(max_size=64).map(lambda b: b"FL\x01" + b))
def test_fuzz_random_bytes(data):
    feed_all(data)


@st.composite
def mutated_frames(draw):
    data = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "header"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "header" and len(data) >= 12:
            # rewrite meta/body lengths so the frame stays self-consistent or nearly so
            meta_len = HEADER.unpack_from(data)[3]
            new_meta = draw(st.integers(0, max(0, len(data) - 12)))
            data[2] = draw(st.sampled_from([1, 1, 1, 0, 2]))
            data[3] = draw(st.integers(0, max(MsgType) + 1))
            data[4:12] = struct.pack(">II", new_meta if draw(st.booleans()) else meta_len, len(data) - 12 - new_meta)
    return bytes(data)


@settings(FUZZ, max_examples=800)
@given(mutated_frames())
def test_fuzz_mutated_frames(data):
    feed_all(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12) | st.binary(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
FIELD_NAMES = [
    "robot_id", "versions", "spec", "units", "policy_version", "agent_version", "version", "run_id", "acked_seq",
    "max_inflight", "seq", "episode_id", "rows", "raw_size", "crc32", "sha256", "size", "values", "code", "message", "first", "last", "reason",
    "client_nonce", "proof", "server_signature", "nonce", "stream", "port", "offset", "partial_policy", "partial_bytes",
    "features", "kind", "value", "id", "step", "obs", "start_step", "horizon", "action_dim", "actions",
]


@settings(FUZZ, max_examples=700)
@given(
    st.sampled_from(ALL_MESSAGES),
    st.sampled_from(list(MsgType)) | st.none(),
    st.dictionaries(st.sampled_from(FIELD_NAMES), msgpack_values, max_size=3),
    st.sets(st.sampled_from(FIELD_NAMES), max_size=2),
    st.binary(max_size=32) | st.none(),
)
def test_fuzz_structured_meta(base, type_, override, drop, body):
    """A valid message's meta with fields replaced by random values or dropped, maybe under another type."""
    meta = {k: v for k, v in {**base.meta(), **override}.items() if k not in drop}
    feed_all(frame(type_ or base.TYPE, meta, getattr(base, "body", b"") if body is None else body))
