"""Cloud-served inference on the link: the hello feature, the refusal reasons, and the checks of
the two messages (:class:`~shared.protocol.messages.ActRequest` robot -> learner,
:class:`~shared.protocol.messages.ActChunk` learner -> robot).

Why a feature (as for :mod:`.commands`): a robot whose build predates inference meets
message type 15 as ``unknown_type`` and drops its link, and a robot that acts from its own
weights has no use for chunks. So a robot lists :data:`FEATURE` in its hello only when its
config says ``policy.where = "cloud"``; :class:`~shared.protocol.CloudConnection` encodes no
ActChunk for any other link and refuses an ActRequest from it (``bad_state``: the robot
broke the negotiation, as with any unexpected message).

A refused request is not a refused link: the learner answers an ActChunk with ``code`` set
(one of :data:`REFUSALS`) and no actions, and the robot takes its configured safe action.

Observations and actions travel as raw little-endian float32 bytes in the frame's meta, so
the core checks sizes, finiteness and bounds without numpy and a fuzzer reaches every check.
Camera frames (uint8) travel in the frame's body: :mod:`.act_cameras` says how and why.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Mapping

from ..errors import ProtocolError
from .codes import RejectCode

FEATURE = "cloud_policy"  # in Hello.features: this robot sends ActRequests and takes ActChunks

# Why a request got no actions (ActChunk.code). Strings, like RejectCode, so counters and logs key on them.
RATE_LIMITED = "rate_limited"  # more than inference.max_requests_per_s from this robot
TOO_MANY_INFLIGHT = "too_many_inflight"  # more than inference.max_in_flight of this robot's requests unanswered
LATENCY_BUDGET = "latency_budget"  # could not be answered within inference.latency_budget_ms: not served late
INFERENCE_DISABLED = "inference_disabled"  # the learner's [inference] enabled = false
NO_POLICY = "no_policy"  # the robot's group has no published policy yet
BAD_OBSERVATION = "bad_observation"  # fields missing or of the wrong size for the policy
CAMERAS_UNSUPPORTED = "cameras_unsupported"  # a learner before camera frames (act_cameras): kept for its robots
OBSERVATION_TOO_LARGE = "observation_too_large"  # camera frames over limits.max_act_camera_bytes
SERVER_ERROR = "server_error"  # the policy raised: logged on the learner
LINK_DOWN = "link_down"  # robot side only: the request never left (no live link)
REFUSALS = (RATE_LIMITED, TOO_MANY_INFLIGHT, LATENCY_BUDGET, INFERENCE_DISABLED, NO_POLICY, BAD_OBSERVATION,
            CAMERAS_UNSUPPORTED, OBSERVATION_TOO_LARGE, SERVER_ERROR, LINK_DOWN)

MAX_FIELDS = 64  # observation fields in one request
MAX_FIELD_FLOATS = 1 << 14  # floats in one state field (64 KiB)
MAX_HORIZON = 1024  # actions in one chunk
MAX_ACTION_DIM = 4096  # = shared.schema.MAX_ACTION_DIM
MAX_ID = 2**32 - 1  # request ids wrap here
MAX_TEXT = 256
FIELD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
ACTION_BOUND = 1.0 + 1e-6  # policies speak [-1, 1]; a float32 rounding step of slack


def _floats(data: Any, what: str, max_floats: int) -> tuple[float, ...]:
    """The float32 values of ``data``: bytes of whole floats, at most ``max_floats``, all finite."""
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"{what} must be bytes of float32, got {type(data).__name__}", RejectCode.BAD_META)
    if len(data) % 4:
        raise ProtocolError(f"{what} holds {len(data)} bytes, not whole float32 values", RejectCode.BAD_META)
    n = len(data) // 4
    if n > max_floats:
        raise ProtocolError(f"{what} holds {n} floats, more than {max_floats}", RejectCode.BAD_META)
    values = struct.unpack(f"<{n}f", data)
    if not all(math.isfinite(v) for v in values):
        raise ProtocolError(f"{what} holds NaN or inf", RejectCode.BAD_META)
    return values


def check_observation(obs: Any, cameras: bool = False) -> dict[str, bytes]:
    """An ActRequest's observation: a map of field name -> float32 bytes (finite, bounded). Empty only
    when ``cameras`` (a policy that reads pixels alone)."""
    if not isinstance(obs, dict):
        raise ProtocolError(f"act_request.obs must be a map, got {type(obs).__name__}", RejectCode.BAD_META)
    if not (0 if cameras else 1) <= len(obs) <= MAX_FIELDS:
        raise ProtocolError(f"act_request.obs must hold {0 if cameras else 1} to {MAX_FIELDS} fields, got {len(obs)}",
                            RejectCode.BAD_META)
    out: dict[str, bytes] = {}
    for name, data in obs.items():
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            shown = repr(name[:40]) if isinstance(name, str) else type(name).__name__
            raise ProtocolError(f"act_request.obs field name {shown} is not a valid field name", RejectCode.BAD_META)
        _floats(data, f"act_request.obs[{name}]", MAX_FIELD_FLOATS)
        out[name] = bytes(data)
    return out


def check_actions(data: Any, horizon: Any, action_dim: Any) -> bytes:
    """An ActChunk's actions: ``horizon`` x ``action_dim`` float32 values in [-1, 1]."""
    for key, v, hi in (("horizon", horizon, MAX_HORIZON), ("action_dim", action_dim, MAX_ACTION_DIM)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ProtocolError(f"act_chunk.{key} must be an int in 1..{hi}, got {str(v)[:20]}", RejectCode.BAD_META)
    values = _floats(data, "act_chunk.actions", MAX_HORIZON * MAX_ACTION_DIM)
    if len(values) != horizon * action_dim:
        raise ProtocolError(f"act_chunk.actions holds {len(values)} floats, not {horizon}x{action_dim}",
                            RejectCode.BAD_META)
    if any(abs(v) > ACTION_BOUND for v in values):
        raise ProtocolError("act_chunk.actions leave [-1, 1]", RejectCode.BAD_META)
    return bytes(data)


def check_code(code: Any, message: Any) -> tuple[str, str]:
    """An ActChunk's refusal: "" (actions follow) or one of :data:`REFUSALS` (an unknown one from a
    newer learner is kept: the robot treats any refusal alike), and a short human message."""
    if not isinstance(code, str) or len(code) > 64:
        raise ProtocolError("act_chunk.code must be a short string", RejectCode.BAD_META)
    if not isinstance(message, str):
        raise ProtocolError(f"act_chunk.message must be str, got {type(message).__name__}", RejectCode.BAD_META)
    return code, message[:MAX_TEXT]


def pack_floats(values: Any) -> bytes:
    """float32 little-endian bytes of a flat sequence (or a numpy array's ``.tobytes()`` when it is one)."""
    tobytes = getattr(values, "astype", None)
    if tobytes is not None:
        return bytes(values.astype("<f4").tobytes())
    vals = list(values)
    return struct.pack(f"<{len(vals)}f", *vals)


def observation_sizes(obs: Mapping[str, bytes]) -> dict[str, int]:
    """Field name -> number of floats, of a checked observation."""
    return {k: len(v) // 4 for k, v in obs.items()}
