"""Sans-I/O state machines for the two ends of one robot link.

Bytes in, messages out; messages in, bytes out. No sockets, files or clocks:
the asyncio layers in ``edge_agent.uplink`` and ``cloud.gateway`` move the
bytes, which is what lets the protocol be fuzzed and tested without a network.

Handshake: cloud -> challenge(nonce); robot -> hello(identity, spec, proof, features);
cloud -> welcome(resume point, server signature) or reject. The hello's features
say what else the robot's link takes (commands: :mod:`.commands`; cloud inference:
:mod:`.inference`); the cloud end encodes nothing a robot did not offer, and takes no
ActRequest from a robot that did not offer inference.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import Any, Mapping

from .. import auth
from ..errors import InvalidState, ProtocolError
from . import act_cameras, commands, inference
from .codes import RejectCode
from .frames import MsgType, decode_frame, encode_frame
from .limits import Limits
from .messages import (
    PARSERS, PROTOCOL_VERSIONS, Ack, ActChunk, ActRequest, Challenge, Chunk, Command, Hello, Lost, Message, Policy, Reject, Status,
    TunnelClose, TunnelData, TunnelOpen, Welcome,
)


class State(enum.Enum):
    START = "start"
    CHALLENGED = "challenged"
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
            raise InvalidState("connection is closed", RejectCode.CLOSED)
        frame = decode_frame(data, self.limits)
        msg: Message = PARSERS[frame.type].parse(frame)
        if isinstance(msg, Reject):
            self.state = State.CLOSED
        elif self.state is State.OPEN and msg.TYPE not in self.accepts:
            raise ProtocolError(f"unexpected {msg.TYPE.name.lower()} on an open link", RejectCode.BAD_STATE)
        return msg

    def reject(self, code: str, message: str) -> bytes:
        """Close the link with a reason (a :class:`RejectCode`, or a peer's free-form one)."""
        self.state = State.CLOSED
        return _encode(Reject(str(code), message))

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise InvalidState(f"link is {self.state.value}, not open")

    def tunnel_data(self, stream: int, data: bytes) -> bytes:
        self._require_open()
        return _encode(TunnelData(stream, data))

    def tunnel_close(self, stream: int, reason: str = "") -> bytes:
        self._require_open()
        return _encode(TunnelClose(stream, reason))


class EdgeConnection(_Base):
    """The robot's end: answers the challenge, then streams chunks and takes acks, policies, tunnels, commands.

    ``features``: what the hello offers beyond the base messages (``commands.FEATURE``: the
    I/O layer applies commands). A command that comes anyway is still parsed and checked;
    the I/O layer decides, so a confused learner costs a log line, not the link."""

    accepts = frozenset({MsgType.ACK, MsgType.POLICY, MsgType.REJECT, MsgType.TUNNEL_OPEN, MsgType.TUNNEL_DATA,
                         MsgType.TUNNEL_CLOSE, MsgType.COMMAND, MsgType.ACT_CHUNK})

    def __init__(self, robot_id: str, spec: dict[str, Any], units: list[dict[str, Any]], limits: Limits | None = None,
                 credential: str | None = None, features: tuple[str, ...] = ()):
        super().__init__(limits)
        self.robot_id, self.spec, self.units, self.features = robot_id, spec, units, features
        self.key = auth.client_key(credential) if credential else None
        self.max_inflight = self.limits.max_inflight_chunks
        self._server_nonce = ""
        self._client_nonce = ""
        self._channel = ""

    def hello(self, policy_version: int, agent_version: str = "", partial: tuple[int, int] = (0, 0),
              channel: str = "") -> bytes:
        """``channel``: SHA-256 (hex) of the learner certificate this link sees, "" on plain ws://;
        the proof and the welcome's signature both cover it (see shared.auth)."""
        if self.state is not State.CHALLENGED:
            raise InvalidState("hello answers the cloud's challenge, once")
        self.state = State.HANDSHAKE
        proof = ""
        self._client_nonce, self._channel = auth.nonce(), channel
        if self.key is not None:
            proof = auth.prove(self.key, self.robot_id, self._server_nonce, self._client_nonce, channel)
        return _encode(Hello(self.robot_id, PROTOCOL_VERSIONS, self.spec, self.units, policy_version, agent_version,
                             self._client_nonce, proof, *partial, features=self.features))

    def receive(self, data: bytes) -> Message:
        if self.state is State.HANDSHAKE or self.state is State.START:
            msg = self._parse(data)
            if isinstance(msg, Reject):
                return msg
            if self.state is State.START:
                if not isinstance(msg, Challenge):
                    raise ProtocolError(f"expected a challenge, got {msg.TYPE.name.lower()}", RejectCode.BAD_STATE)
                self._server_nonce, self.state = msg.nonce, State.CHALLENGED
                return msg
            if not isinstance(msg, Welcome):
                raise ProtocolError(f"expected welcome, got {msg.TYPE.name.lower()}", RejectCode.BAD_STATE)
            if msg.version not in PROTOCOL_VERSIONS:
                raise ProtocolError(f"cloud chose protocol version {msg.version}, not offered", RejectCode.UNSUPPORTED_VERSION)
            if self.key is not None:
                if not auth.check_server_signature(auth.stored_key(self.key), self.robot_id, self._server_nonce,
                                                   self._client_nonce, self._channel, msg.server_signature):
                    raise ProtocolError("the learner could not prove it is the one this robot enrolled with",
                                        RejectCode.LEARNER_UNVERIFIED)
            self.version, self.state = msg.version, State.OPEN
            self.max_inflight = min(msg.max_inflight, self.limits.max_inflight_chunks)
            return msg
        if self.state is State.CHALLENGED:
            raise InvalidState("nothing is read before our hello is sent")
        return self._parse(data)

    def chunk(self, seq: int, episode_id: str, rows: int, raw_size: int, crc32: int, body: bytes) -> bytes:
        self._require_open()
        return _encode(Chunk(seq, episode_id, rows, raw_size, crc32, body))

    def status(self, values: dict[str, Any]) -> bytes:
        self._require_open()
        return _encode(Status(values))

    def lost(self, first: int, last: int, reason: str) -> bytes:
        self._require_open()
        return _encode(Lost(first, last, reason))

    def act_request(self, request_id: int, step: int, obs: dict[str, bytes], policy_version: int = 0,
                    cameras: Mapping[str, act_cameras.CameraFrame] | None = None) -> bytes:
        """Ask the learner's policy server to act for ``obs`` (field -> float32 bytes) and ``cameras``
        (field -> frame, :mod:`.act_cameras`), taken at tick ``step``. Checked as the learner will check
        it, against our own spec and limits (ProtocolError); InvalidState unless our hello offered inference."""
        self._require_open()
        if inference.FEATURE not in self.features:
            raise InvalidState("this link's hello did not offer cloud inference (policy.where = \"cloud\")")
        cams = dict(cameras or {})
        obs = inference.check_observation(obs, cameras=bool(cams))
        msg = ActRequest(request_id, step, obs, policy_version, cams)
        if cams:
            act_cameras.parse(*msg.packed, inference.FIELD_NAME, obs)
            try:
                act_cameras.check(cams, act_cameras.spec_shapes(self.spec), self.limits.max_act_camera_bytes)
            except act_cameras.Refused as e:
                raise ProtocolError(e.message, RejectCode.BAD_META) from None
        return _encode(msg)


class CloudConnection(_Base):
    """The learner's end: challenges, takes a hello, then chunks and status; sends acks, policies, tunnels."""

    accepts = frozenset({MsgType.CHUNK, MsgType.LOST, MsgType.STATUS, MsgType.REJECT, MsgType.TUNNEL_DATA,
                         MsgType.TUNNEL_CLOSE, MsgType.ACT_REQUEST})

    def __init__(self, limits: Limits | None = None, channel: str = ""):
        """``channel``: SHA-256 (hex) of this learner's own TLS certificate, "" on plain ws://."""
        super().__init__(limits)
        self.channel = channel
        self.robot_id: str | None = None
        self.hello_msg: Hello | None = None
        self.server_nonce = ""
        self._shapes: dict[str, act_cameras.ImageShape] | None = None  # the hello spec's cameras, on first use

    def challenge(self) -> bytes:
        if self.state is not State.START:
            raise InvalidState("the challenge opens the link, once")
        self.server_nonce, self.state = auth.nonce(), State.CHALLENGED
        return _encode(Challenge(self.server_nonce))

    def receive(self, data: bytes) -> Message:
        if self.state is State.START:
            raise InvalidState("send the challenge first")
        msg = self._parse(data)
        if self.state is State.CHALLENGED:
            if not isinstance(msg, Hello):
                raise ProtocolError(f"expected hello, got {msg.TYPE.name.lower()}", RejectCode.BAD_STATE)
            common = set(msg.versions) & set(PROTOCOL_VERSIONS)
            if not common:
                raise ProtocolError(
                    f"robot speaks protocol versions {list(msg.versions)}; this learner speaks {list(PROTOCOL_VERSIONS)}",
                    RejectCode.UNSUPPORTED_VERSION,
                )
            self.version, self.robot_id, self.hello_msg = max(common), msg.robot_id, msg
            self.state = State.HANDSHAKE
        elif self.state is State.HANDSHAKE and not isinstance(msg, Reject):
            raise ProtocolError("message before the welcome was sent", RejectCode.BAD_STATE)
        elif isinstance(msg, Chunk) and len(msg.body) > self.limits.max_frame_bytes:
            raise ProtocolError("chunk body too large", RejectCode.FRAME_TOO_LARGE)
        elif isinstance(msg, ActRequest) and not self.takes_inference:
            raise ProtocolError(f"robot {self.robot_id} sent an act request without offering {inference.FEATURE!r} "
                                "in its hello", RejectCode.BAD_STATE)
        elif isinstance(msg, ActRequest) and msg.cameras:
            return self._camera_request(msg)
        return msg

    def _camera_request(self, msg: ActRequest) -> ActRequest:
        """A request's frames checked against the spec this robot's hello negotiated and the byte limit, and
        decompressed: raw frames, or the request with ``refusal`` set (answered, the link lives)."""
        if self._shapes is None:
            self._shapes = act_cameras.spec_shapes(self.hello_msg.spec if self.hello_msg else {})
        try:
            raw = act_cameras.check(msg.cameras, self._shapes, self.limits.max_act_camera_bytes)
        except act_cameras.Refused as e:
            return replace(msg, cameras={}, refusal=(e.code, e.message))
        return replace(msg, cameras={n: act_cameras.CameraFrame(f.shape, "raw", raw[n]) for n, f in msg.cameras.items()})

    def verify(self, stored_key: bytes) -> bool:
        """Does the hello prove knowledge of the key whose hash is ``stored_key``?"""
        h = self.hello_msg
        return h is not None and bool(h.proof) and auth.verify(
            stored_key, h.robot_id, self.server_nonce, h.client_nonce, h.proof, self.channel)

    def welcome(self, run_id: str, acked_seq: int, policy_version: int, stored_key: bytes | None = None) -> bytes:
        if self.state is not State.HANDSHAKE or self.version is None or self.hello_msg is None:
            raise InvalidState("welcome answers a hello")
        self.state = State.OPEN
        sig = ""
        if stored_key is not None:
            sig = auth.server_signature(stored_key, self.hello_msg.robot_id, self.server_nonce, self.hello_msg.client_nonce,
                                        self.channel)
        return _encode(Welcome(self.version, run_id, acked_seq, policy_version, self.limits.max_inflight_chunks, sig))

    def ack(self, seq: int) -> bytes:
        self._require_open()
        return _encode(Ack(seq))

    def policy(self, version: int, sha256: str, size: int, offset: int, part: bytes) -> bytes:
        """One part of a policy blob of ``size`` bytes, starting at ``offset``."""
        self._require_open()
        return _encode(Policy(version, sha256, size, offset, part))

    def tunnel_open(self, stream: int, port: int) -> bytes:
        self._require_open()
        return _encode(TunnelOpen(stream, port))

    @property
    def takes_commands(self) -> bool:
        """Whether the robot's hello offered commands (an older agent, or one whose site turned them off, did not)."""
        return self.hello_msg is not None and commands.FEATURE in self.hello_msg.features

    @property
    def takes_inference(self) -> bool:
        """Whether the robot's hello offered cloud inference (its config says policy.where = "cloud")."""
        return self.hello_msg is not None and inference.FEATURE in self.hello_msg.features

    def act_chunk(self, request_id: int, start_step: int, policy_version: int, actions: Any = None,
                  code: str = "", message: str = "", cameras: tuple[str, ...] = ()) -> bytes:
        """The answer to an ActRequest: ``actions`` (a float32 [horizon, action_dim] array-like in [-1, 1])
        and the ``cameras`` the policy read, or a refusal ``code`` (:data:`inference.REFUSALS`) and a message. Checked as the robot will check
        it (ProtocolError); InvalidState for a robot that did not offer inference."""
        self._require_open()
        if not self.takes_inference:
            raise InvalidState(f"robot {self.robot_id} did not offer cloud inference in its hello")
        code, message = inference.check_code(code, message)
        if code:
            return _encode(ActChunk(request_id, start_step, policy_version, code=code, message=message))
        if actions is None or len(getattr(actions, "shape", ())) != 2:
            raise ProtocolError("act_chunk actions must be a [horizon, action_dim] array", RejectCode.BAD_META)
        horizon, action_dim = int(actions.shape[0]), int(actions.shape[1])
        data = inference.check_actions(inference.pack_floats(actions.reshape(-1)), horizon, action_dim)
        cams = act_cameras.check_names(list(cameras), inference.FIELD_NAME)
        return _encode(ActChunk(request_id, start_step, policy_version, horizon, action_dim, data, cameras=cams))

    def command(self, kind: str, value: Any = None) -> bytes:
        """An operator command (``commands.check`` says which values are valid: ProtocolError otherwise).
        InvalidState for a robot that did not offer commands: its link would break on the frame."""
        self._require_open()
        if not self.takes_commands:
            raise InvalidState(f"robot {self.robot_id} did not offer commands in its hello")
        return _encode(Command(kind, commands.check(kind, value)))
