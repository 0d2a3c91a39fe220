"""The two messages of cloud-served inference (``policy.where = "cloud"``): a robot's request to act for an
observation and the learner's answer, a chunk of actions or a refusal. Their fields' rules are in
:mod:`.inference` (state) and :mod:`.act_cameras` (frames)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from . import act_cameras, inference
from .fields import uint_of as _uint
from .frames import Frame, MsgType


@dataclass(frozen=True)
class ActRequest:
    """Robot to cloud: "act for this observation" (``policy.where = "cloud"``). ``step`` is the robot's tick the
    observation was taken at; the answer's chunk starts there, so the robot knows how much of it the round
    trip already used. Sent only by a robot whose hello offered :data:`inference.FEATURE`. Camera frames
    ride in the body (:mod:`.act_cameras`); ``refusal`` is set by the learner's connection, never sent."""

    TYPE: ClassVar[MsgType] = MsgType.ACT_REQUEST
    id: int  # the robot's request id (wraps at 2**32): the answer carries it
    step: int
    obs: dict[str, bytes]  # state field -> float32 little-endian bytes
    policy_version: int = 0  # the version the robot holds itself, if any (for the learner's log)
    cameras: dict[str, act_cameras.CameraFrame] = field(default_factory=dict)  # camera field -> frame
    refusal: tuple[str, str] | None = None  # (code, message): the cameras do not fit the negotiated spec

    @cached_property
    def packed(self) -> tuple[list[dict[str, Any]], bytes]:
        """The cameras' meta list and body, built once (the robot checks them, then sends them)."""
        return act_cameras.pack(self.cameras)

    def meta(self) -> dict[str, Any]:
        m = {"id": self.id, "step": self.step, "obs": self.obs, "policy_version": self.policy_version}
        if self.cameras:  # absent without cameras: a state-only request is the same bytes as before cameras
            m["cameras"] = self.packed[0]
        return m

    @property
    def body(self) -> bytes:
        return self.packed[1] if self.cameras else b""

    @classmethod
    def parse(cls, f: Frame) -> "ActRequest":
        m = f.meta
        obs = inference.check_observation(m.get("obs"), cameras="cameras" in m)
        return cls(id=_uint(m, "id", "act_request", inference.MAX_ID), step=_uint(m, "step", "act_request"),
                   obs=obs, policy_version=_uint(m, "policy_version", "act_request") if "policy_version" in m else 0,
                   cameras=act_cameras.parse(m.get("cameras"), f.body, inference.FIELD_NAME, obs))


@dataclass(frozen=True)
class ActChunk:
    """Cloud to robot: the answer to one ActRequest: ``horizon`` actions in [-1, 1] for steps
    ``start_step``, ``start_step + 1``, ... (float32 bytes, row-major), chosen by ``policy_version``;
    or, with ``code`` set (:data:`inference.REFUSALS`), no actions and the reason."""

    TYPE: ClassVar[MsgType] = MsgType.ACT_CHUNK
    id: int
    start_step: int
    policy_version: int = 0
    horizon: int = 0
    action_dim: int = 0
    actions: bytes = b""
    code: str = ""
    message: str = ""
    cameras: tuple[str, ...] = ()  # the camera fields the policy read: what the robot sends next (act_cameras)

    def meta(self) -> dict[str, Any]:
        m = asdict(self)
        if self.cameras:  # absent for a state policy: the same bytes as before cameras
            m["cameras"] = list(self.cameras)
        else:
            del m["cameras"]
        return m

    @classmethod
    def parse(cls, f: Frame) -> "ActChunk":
        m = f.meta
        code, message = inference.check_code(m.get("code", ""), m.get("message", ""))
        rid, start = _uint(m, "id", "act_chunk", inference.MAX_ID), _uint(m, "start_step", "act_chunk")
        version = _uint(m, "policy_version", "act_chunk")
        if code:
            return cls(rid, start, version, code=code, message=message)
        horizon, action_dim = m.get("horizon"), m.get("action_dim")
        actions = inference.check_actions(m.get("actions"), horizon, action_dim)  # checks both ints too
        return cls(rid, start, version, int(horizon), int(action_dim), actions,  # type: ignore[arg-type]
                   cameras=act_cameras.check_names(m.get("cameras", []), inference.FIELD_NAME))
