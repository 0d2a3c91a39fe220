"""The messages of link protocol v1, each to and from a :class:`Frame`.

Every field is type-checked on the way in; a wrong one is a
:class:`ProtocolError` with code ``bad_meta`` naming the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..errors import ProtocolError
from .codes import RejectCode
from ..ids import SAFE_ID
from . import commands
from .act_messages import ActChunk as ActChunk, ActRequest as ActRequest  # re-exported: one import for every message
from .fields import field_of as _field, uint_of as _uint
from .frames import Frame, MsgType

PROTOCOL_VERSIONS = (1,)  # link protocol versions this build speaks
ROBOT_ID = SAFE_ID  # ids become file names: shared.ids says which are safe

@dataclass(frozen=True)
class Hello:
    """Robot to cloud, first: who it is, what it records, where to resume."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    robot_id: str
    versions: tuple[int, ...]
    spec: dict[str, Any]
    units: list[dict[str, Any]] = field(default_factory=list)
    policy_version: int = 0
    agent_version: str = ""
    client_nonce: str = ""
    proof: str = ""  # credential proof (shared.auth); empty for an unenrolled robot
    partial_policy: int = 0  # a policy version the robot has part of ...
    partial_bytes: int = 0  # ... and how many bytes: the cloud resumes from there
    # What this link takes beyond v1's base messages (commands.FEATURE); an older peer ignores or omits it.
    features: tuple[str, ...] = ()

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        d["versions"] = list(self.versions)
        d["features"] = list(self.features)
        return d

    @classmethod
    def parse(cls, f: Frame) -> "Hello":
        m = f.meta
        robot_id = _field(m, "robot_id", str, "hello")
        if not ROBOT_ID.fullmatch(robot_id):
            raise ProtocolError(f"hello.robot_id {robot_id[:40]!r} is not a valid robot id", RejectCode.BAD_META)
        versions = _field(m, "versions", list, "hello")
        if not versions or len(versions) > 16 or not all(isinstance(v, int) and not isinstance(v, bool) for v in versions):
            raise ProtocolError("hello.versions must be a short list of ints", RejectCode.BAD_META)
        units = _field(m, "units", list, "hello") if "units" in m else []
        features = _field(m, "features", list, "hello") if "features" in m else []
        if len(features) > 16 or not all(isinstance(f, str) and len(f) <= 32 for f in features):
            raise ProtocolError("hello.features must be a short list of short strings", RejectCode.BAD_META)
        return cls(
            robot_id=robot_id,
            versions=tuple(versions),
            spec=_field(m, "spec", dict, "hello"),
            units=[u for u in units if isinstance(u, dict)],
            policy_version=_uint(m, "policy_version", "hello") if "policy_version" in m else 0,
            agent_version=str(m.get("agent_version", ""))[:64],
            client_nonce=_field(m, "client_nonce", str, "hello")[:64] if "client_nonce" in m else "",
            proof=_field(m, "proof", str, "hello")[:128] if "proof" in m else "",
            partial_policy=_uint(m, "partial_policy", "hello") if "partial_policy" in m else 0,
            partial_bytes=_uint(m, "partial_bytes", "hello") if "partial_bytes" in m else 0,
            features=tuple(features),
        )


@dataclass(frozen=True)
class Welcome:
    """Cloud to robot: the agreed version and the durable resume point."""

    TYPE: ClassVar[MsgType] = MsgType.WELCOME
    version: int
    run_id: str
    acked_seq: int  # highest stream sequence already durable in the cloud (0 = none)
    policy_version: int
    max_inflight: int
    server_signature: str = ""  # the learner's proof that it knows this robot's stored key

    def meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, f: Frame) -> "Welcome":
        m = f.meta
        return cls(
            version=_uint(m, "version", "welcome"),
            run_id=_field(m, "run_id", str, "welcome"),
            acked_seq=_uint(m, "acked_seq", "welcome"),
            policy_version=_uint(m, "policy_version", "welcome"),
            max_inflight=max(1, _uint(m, "max_inflight", "welcome", 1 << 16)),
            server_signature=_field(m, "server_signature", str, "welcome")[:128] if "server_signature" in m else "",
        )


@dataclass(frozen=True)
class Chunk:
    """Robot to cloud: one zstd-compressed Arrow IPC chunk of an episode."""

    TYPE: ClassVar[MsgType] = MsgType.CHUNK
    seq: int  # robot stream sequence, 1, 2, 3, ... never reused
    episode_id: str
    rows: int
    raw_size: int
    crc32: int
    body: bytes = b""

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        del d["body"]
        return d

    @classmethod
    def parse(cls, f: Frame) -> "Chunk":
        m = f.meta
        seq = _uint(m, "seq", "chunk")
        if seq == 0:
            raise ProtocolError("chunk.seq starts at 1", RejectCode.BAD_META)
        episode_id = _field(m, "episode_id", str, "chunk")
        if not SAFE_ID.fullmatch(episode_id):
            raise ProtocolError(f"chunk.episode_id {episode_id[:40]!r} is not a valid episode id", RejectCode.BAD_META)
        return cls(
            seq=seq,
            episode_id=episode_id,
            rows=_uint(m, "rows", "chunk"),
            raw_size=_uint(m, "raw_size", "chunk"),
            crc32=_uint(m, "crc32", "chunk", 0xFFFFFFFF),
            body=f.body,
        )


@dataclass(frozen=True)
class Ack:
    """Cloud to robot: every chunk with seq <= this is durable; delete it."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    seq: int

    def meta(self) -> dict[str, Any]:
        return {"seq": self.seq}

    @classmethod
    def parse(cls, f: Frame) -> "Ack":
        return cls(seq=_uint(f.meta, "seq", "ack"))


@dataclass(frozen=True)
class Policy:
    """Cloud to robot: one part of new policy weights (safetensors), checked by sha256 once whole.

    Parts let acks and commands overtake a large policy, and let a transfer cut
    by a broken link resume where it stopped (the hello says how far it got).
    """

    TYPE: ClassVar[MsgType] = MsgType.POLICY
    version: int
    sha256: str
    size: int  # of the whole blob
    offset: int = 0  # where this part starts
    body: bytes = b""

    def meta(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "size": self.size, "offset": self.offset}

    @classmethod
    def parse(cls, f: Frame) -> "Policy":
        size = _uint(f.meta, "size", "policy")
        offset = _uint(f.meta, "offset", "policy") if "offset" in f.meta else 0
        if offset + len(f.body) > size:
            raise ProtocolError(f"policy part {offset}+{len(f.body)} runs past its size {size}", RejectCode.TRUNCATED)
        sha = _field(f.meta, "sha256", str, "policy")
        if len(sha) != 64:
            raise ProtocolError("policy.sha256 must be 64 hex digits", RejectCode.BAD_META)
        return cls(version=_uint(f.meta, "version", "policy"), sha256=sha, size=size, offset=offset, body=f.body)


@dataclass(frozen=True)
class Status:
    """Robot to cloud: a flat map of scalar readings (rates, counters, states)."""

    TYPE: ClassVar[MsgType] = MsgType.STATUS
    values: dict[str, Any]

    def meta(self) -> dict[str, Any]:
        return {"values": self.values}

    @classmethod
    def parse(cls, f: Frame) -> "Status":
        values = _field(f.meta, "values", dict, "status")
        clean = {
            str(k)[:64]: v for k, v in list(values.items())[:64]
            if isinstance(v, (int, float, str, bool)) and not (isinstance(v, str) and len(v) > 256)
        }
        return cls(values=clean)


@dataclass(frozen=True)
class Reject:
    """Either way, before a close: a reason code and a human message."""

    TYPE: ClassVar[MsgType] = MsgType.REJECT
    code: str
    message: str

    def meta(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def parse(cls, f: Frame) -> "Reject":
        return cls(
            code=_field(f.meta, "code", str, "reject")[:64],
            message=_field(f.meta, "message", str, "reject")[:1024],
        )


@dataclass(frozen=True)
class Lost:
    """Robot to cloud: chunks ``first..last`` were damaged on the robot's disk
    and cannot be sent. The cloud records the loss and moves its mark past it,
    so a bad sector is reported, never silent, and never blocks the stream."""

    TYPE: ClassVar[MsgType] = MsgType.LOST
    first: int
    last: int
    reason: str

    def meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, f: Frame) -> "Lost":
        first, last = _uint(f.meta, "first", "lost"), _uint(f.meta, "last", "lost")
        if not 0 < first <= last:
            raise ProtocolError(f"lost range {first}..{last} is empty or starts at 0", RejectCode.BAD_META)
        return cls(first=first, last=last, reason=_field(f.meta, "reason", str, "lost")[:256])


@dataclass(frozen=True)
class Challenge:
    """Cloud to robot, first on every link: a fresh nonce the robot's proof must cover."""

    TYPE: ClassVar[MsgType] = MsgType.CHALLENGE
    nonce: str

    def meta(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def parse(cls, f: Frame) -> "Challenge":
        n = _field(f.meta, "nonce", str, "challenge")
        if not 16 <= len(n) <= 64:
            raise ProtocolError("challenge.nonce has a bad length", RejectCode.BAD_META)
        return cls(nonce=n)


@dataclass(frozen=True)
class TunnelOpen:
    """Cloud to robot: open a TCP stream to a port on the robot (its allowlist decides)."""

    TYPE: ClassVar[MsgType] = MsgType.TUNNEL_OPEN
    stream: int
    port: int

    def meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, f: Frame) -> "TunnelOpen":
        return cls(stream=_uint(f.meta, "stream", "tunnel_open", 2**31), port=_uint(f.meta, "port", "tunnel_open", 65535))


@dataclass(frozen=True)
class TunnelData:
    """Either way: bytes of one tunnelled stream."""

    TYPE: ClassVar[MsgType] = MsgType.TUNNEL_DATA
    stream: int
    body: bytes = b""

    def meta(self) -> dict[str, Any]:
        return {"stream": self.stream}

    @classmethod
    def parse(cls, f: Frame) -> "TunnelData":
        return cls(stream=_uint(f.meta, "stream", "tunnel_data", 2**31), body=f.body)


@dataclass(frozen=True)
class TunnelClose:
    """Either way: a tunnelled stream ended (or was refused, with the reason)."""

    TYPE: ClassVar[MsgType] = MsgType.TUNNEL_CLOSE
    stream: int
    reason: str = ""

    def meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, f: Frame) -> "TunnelClose":
        return cls(stream=_uint(f.meta, "stream", "tunnel_close", 2**31),
                   reason=_field(f.meta, "reason", str, "tunnel_close")[:256] if "reason" in f.meta else "")


@dataclass(frozen=True)
class Command:
    """Cloud to robot: an operator's command (pause, start/stop episode, label, reward), applied
    at the robot's next control tick. Sent only to a robot whose hello offered them
    (:mod:`shared.protocol.commands` says why, and what each kind's value is)."""

    TYPE: ClassVar[MsgType] = MsgType.COMMAND
    kind: str
    value: bool | float | str | None = None

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def parse(cls, f: Frame) -> "Command":
        kind = _field(f.meta, "kind", str, "command")
        return cls(kind=kind, value=commands.check(kind, f.meta.get("value")))


Message = (Hello | Welcome | Chunk | Ack | Policy | Status | Reject | Lost | Challenge | TunnelOpen | TunnelData | TunnelClose
           | Command | ActRequest | ActChunk)
PARSERS: dict[MsgType, Any] = {
    c.TYPE: c
    for c in (Hello, Welcome, Chunk, Ack, Policy, Status, Reject, Lost, Challenge, TunnelOpen, TunnelData, TunnelClose,
              Command, ActRequest, ActChunk)
}
