"""Sans-I/O state machines for the two ends of one robot link.

Bytes in, messages out; messages in, bytes out. No sockets, files or clocks:
the asyncio layers in ``edge_agent.uplink`` and ``cloud.gateway`` move the
bytes, which is what lets the protocol be fuzzed and tested without a network.
"""

from __future__ import annotations

import enum
from typing import Any

from ..errors import ProtocolError
from .frames import MsgType, decode_frame, encode_frame
from .limits import Limits
from .messages import PARSERS, PROTOCOL_VERSIONS, Ack, Chunk, Hello, Lost, Message, Policy, Reject, Status, Welcome


class State(enum.Enum):
    START = "start"
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


def _encode(msg: Message) -> bytes:
    return encode_frame(msg.TYPE, msg.meta(), getattr(msg, "body", b""))


class _Base:
    # Which message types each side may receive in the OPEN state.
    accepts: frozenset[MsgType] = frozenset()

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.state = State.START
        self.version: int | None = None

    def _parse(self, data: bytes) -> Message:
        if self.state is State.CLOSED:
            raise ProtocolError("connection is closed", "closed")
        frame = decode_frame(data, self.limits)
        msg = PARSERS[frame.type].parse(frame)
        if isinstance(msg, Reject):
            self.state = State.CLOSED
        return msg

    def reject(self, code: str, message: str) -> bytes:
        self.state = State.CLOSED
        return _encode(Reject(code, message))

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise ProtocolError(f"link is {self.state.value}, not open", "bad_state")


class EdgeConnection(_Base):
    """The robot's end: says hello, then streams chunks and takes acks and policies."""

    accepts = frozenset({MsgType.ACK, MsgType.POLICY, MsgType.REJECT})

    def __init__(self, robot_id: str, spec: dict[str, Any], units: list[dict[str, Any]], limits: Limits | None = None):
        super().__init__(limits)
        self.robot_id, self.spec, self.units = robot_id, spec, units
        self.max_inflight = self.limits.max_inflight_chunks

    def hello(self, policy_version: int, agent_version: str = "") -> bytes:
        if self.state is not State.START:
            raise ProtocolError("hello is sent once, first", "bad_state")
        self.state = State.HANDSHAKE
        return _encode(Hello(self.robot_id, PROTOCOL_VERSIONS, self.spec, self.units, policy_version, agent_version))

    def receive(self, data: bytes) -> Message:
        if self.state is State.START:
            raise ProtocolError("nothing is expected before our hello", "bad_state")
        msg = self._parse(data)
        if self.state is State.HANDSHAKE:
            if isinstance(msg, Welcome):
                if msg.version not in PROTOCOL_VERSIONS:
                    raise ProtocolError(f"cloud chose protocol version {msg.version}, not offered", "unsupported_version")
                self.version, self.state = msg.version, State.OPEN
                self.max_inflight = min(msg.max_inflight, self.limits.max_inflight_chunks)
            elif not isinstance(msg, Reject):
                raise ProtocolError(f"expected welcome, got {msg.TYPE.name.lower()}", "bad_state")
        elif self.state is State.OPEN and msg.TYPE not in self.accepts:
            raise ProtocolError(f"unexpected {msg.TYPE.name.lower()} from the cloud", "bad_state")
        return msg

    def chunk(self, seq: int, episode_id: str, rows: int, raw_size: int, crc32: int, body: bytes) -> bytes:
        self._require_open()
        return _encode(Chunk(seq, episode_id, rows, raw_size, crc32, body))

    def status(self, values: dict[str, Any]) -> bytes:
        self._require_open()
        return _encode(Status(values))

    def lost(self, first: int, last: int, reason: str) -> bytes:
        self._require_open()
        return _encode(Lost(first, last, reason))



class CloudConnection(_Base):
    """The learner's end: takes a hello, then chunks and status; sends acks and policies."""

    accepts = frozenset({MsgType.CHUNK, MsgType.LOST, MsgType.STATUS, MsgType.REJECT})

    def __init__(self, limits: Limits | None = None):
        super().__init__(limits)
        self.robot_id: str | None = None

    def receive(self, data: bytes) -> Message:
        msg = self._parse(data)
        if self.state is State.START:
            if not isinstance(msg, Hello):
                raise ProtocolError(f"expected hello, got {msg.TYPE.name.lower()}", "bad_state")
            common = set(msg.versions) & set(PROTOCOL_VERSIONS)
            if not common:
                raise ProtocolError(
                    f"robot speaks protocol versions {list(msg.versions)}; this learner speaks {list(PROTOCOL_VERSIONS)}",
                    "unsupported_version",
                )
            self.version, self.robot_id, self.state = max(common), msg.robot_id, State.HANDSHAKE
        elif self.state is State.OPEN:
            if msg.TYPE not in self.accepts:
                raise ProtocolError(f"unexpected {msg.TYPE.name.lower()} from a robot", "bad_state")
            if isinstance(msg, Chunk) and len(msg.body) > self.limits.max_frame_bytes:
                raise ProtocolError("chunk body too large", "frame_too_large")
        elif not isinstance(msg, Reject):
            raise ProtocolError("message before the welcome was sent", "bad_state")
        return msg

    def welcome(self, run_id: str, acked_seq: int, policy_version: int) -> bytes:
        if self.state is not State.HANDSHAKE or self.version is None:
            raise ProtocolError("welcome answers a hello", "bad_state")
        self.state = State.OPEN
        return _encode(Welcome(self.version, run_id, acked_seq, policy_version, self.limits.max_inflight_chunks))

    def ack(self, seq: int) -> bytes:
        self._require_open()
        return _encode(Ack(seq))

    def policy(self, version: int, sha256: str, data: bytes) -> bytes:
        self._require_open()
        return _encode(Policy(version, sha256, data))
