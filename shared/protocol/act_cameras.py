"""Camera frames in an :class:`~shared.protocol.messages.ActRequest`: how they travel and how the core
checks them (a VLA or CNN policy served from the cloud reads the robot's cameras).

Wire form: the request's meta holds ``cameras``, a list of ``{"name", "shape": [H, W, C], "codec",
"size"}`` in body order, and the frame's body is the frames' bytes, one after another. ``codec`` is
``"raw"`` (H*W*C uint8 bytes, row-major HxWxC) or ``"zstd"`` (one zstd frame of those bytes, its
content size declared, as :mod:`shared.compression` writes it). The frames go in the body, not in the
msgpack meta, because the meta is capped at ``limits.max_meta_bytes`` (64 KiB) and one 128x128 RGB frame
is 48 KiB. A request without cameras has no ``cameras`` key and an empty body: the same bytes as before
cameras existed, so a state-only robot and a learner of either age see no change.

Two kinds of wrong, two answers (as for state fields):

- :func:`parse` (every frame, before anything else): the structure. A list that is not a list, a
  name that is not a field name, sizes that do not add up to the body: the robot's encoder is broken,
  a :class:`ProtocolError` like any malformed message.
- :func:`check` (the learner, against the spec the robot's hello negotiated and the byte limit):
  the content. A camera the spec lacks, a shape that is not the spec's, a byte count that does not
  match it, corrupt zstd, more than ``limits.max_act_camera_bytes``: the request is refused with a
  reason (``bad_observation`` / ``observation_too_large``), the link stays up.

Plain functions over bytes and ints (no numpy), so a fuzzer reaches every check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .. import compression
from ..errors import CompressionError, ProtocolError
from .codes import RejectCode

CODECS = ("raw", "zstd")
MAX_CAMERAS = 16  # camera fields in one request
MAX_SIDE = 1 << 14  # pixels along one side
MAX_CHANNELS = 16

ImageShape = tuple[int, int, int]  # H, W, C


@dataclass(frozen=True)
class CameraFrame:
    """One camera's frame as it travels: ``data`` is raw HxWxC uint8 bytes, or zstd of them."""

    shape: ImageShape
    codec: str
    data: bytes

    @property
    def raw_size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


def frame(data: bytes, shape: Any, codec: str = "raw") -> CameraFrame:
    """A frame to send, from raw uint8 bytes of ``shape`` (HxWxC): compressed when ``codec`` is "zstd"."""
    h, w, c = (int(x) for x in shape)
    raw = bytes(data)
    if codec not in CODECS:
        raise ProtocolError(f"camera codec {codec!r} is not one of {list(CODECS)}", RejectCode.BAD_META)
    return CameraFrame((h, w, c), codec, compression.compress(raw, 1) if codec == "zstd" else raw)


def pack(cameras: Mapping[str, CameraFrame]) -> tuple[list[dict[str, Any]], bytes]:
    """The meta list and the body for ``cameras`` (name -> frame), in the mapping's order."""
    meta = [{"name": n, "shape": list(f.shape), "codec": f.codec, "size": len(f.data)} for n, f in cameras.items()]
    return meta, b"".join(f.data for f in cameras.values())


def _uint(v: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(f"{what} must be an int in {lo}..{hi}, got {str(v)[:20]}", RejectCode.BAD_META)
    return v


def parse(meta: Any, body: Any, field_name: Any, state_fields: Mapping[str, Any]) -> dict[str, CameraFrame]:
    """The structure of ``meta["cameras"]`` and the body: names, shapes, codecs, sizes that add up.
    ``field_name`` is the compiled field-name pattern; a camera may not reuse a state field's name."""
    if meta is None:
        if body:
            raise ProtocolError(f"act_request has a body of {len(body)} bytes but no cameras", RejectCode.BAD_META)
        return {}
    if not isinstance(meta, list):
        raise ProtocolError(f"act_request.cameras must be a list, got {type(meta).__name__}", RejectCode.BAD_META)
    if not 0 < len(meta) <= MAX_CAMERAS:
        raise ProtocolError(f"act_request.cameras must hold 1 to {MAX_CAMERAS} frames, got {len(meta)}",
                            RejectCode.BAD_META)
    out: dict[str, CameraFrame] = {}
    pos = 0
    for i, m in enumerate(meta):
        where = f"act_request.cameras[{i}]"
        if not isinstance(m, dict):
            raise ProtocolError(f"{where} must be a map, got {type(m).__name__}", RejectCode.BAD_META)
        name = m.get("name")
        if not isinstance(name, str) or not field_name.fullmatch(name):
            shown = repr(name[:40]) if isinstance(name, str) else type(name).__name__
            raise ProtocolError(f"{where}.name {shown} is not a valid field name", RejectCode.BAD_META)
        if name in out or name in state_fields:
            raise ProtocolError(f"act_request field {name!r} appears twice", RejectCode.BAD_META)
        shape = m.get("shape")
        if not isinstance(shape, list) or len(shape) != 3:
            raise ProtocolError(f"{where}.shape must be [H, W, C]", RejectCode.BAD_META)
        h, w = _uint(shape[0], f"{where}.shape[0]", 1, MAX_SIDE), _uint(shape[1], f"{where}.shape[1]", 1, MAX_SIDE)
        c = _uint(shape[2], f"{where}.shape[2]", 1, MAX_CHANNELS)
        codec = m.get("codec")
        if codec not in CODECS:
            raise ProtocolError(f"{where}.codec must be one of {list(CODECS)}, got {str(codec)[:20]!r}",
                                RejectCode.BAD_META)
        size = _uint(m.get("size"), f"{where}.size", 0, len(body) - pos)
        if codec == "raw" and size != h * w * c:
            raise ProtocolError(f"{where} is raw {h}x{w}x{c} but holds {size} bytes, not {h * w * c}",
                                RejectCode.BAD_META)
        out[name] = CameraFrame((h, w, c), codec, bytes(body[pos:pos + size]))
        pos += size
    if pos != len(body):
        raise ProtocolError(f"act_request body holds {len(body)} bytes, its cameras {pos}", RejectCode.BAD_META)
    return out


def check_names(names: Any, field_name: Any) -> tuple[str, ...]:
    """An ActChunk's ``cameras``: the camera fields the served policy read, so the robot sends only
    those next (absent: none; a robot that predates cameras ignores the key)."""
    if not isinstance(names, list) or len(names) > MAX_CAMERAS:
        raise ProtocolError(f"act_chunk.cameras must be a list of at most {MAX_CAMERAS} names", RejectCode.BAD_META)
    if not all(isinstance(n, str) and field_name.fullmatch(n) for n in names):
        raise ProtocolError("act_chunk.cameras holds a name that is not a valid field name", RejectCode.BAD_META)
    return tuple(names)


def spec_shapes(spec: Any) -> dict[str, ImageShape]:
    """Camera field -> HxWxC of a hello's spec dict (uint8 HxWxC fields); {} for anything else."""
    obs = spec.get("observation") if isinstance(spec, dict) else None
    out: dict[str, ImageShape] = {}
    for name, fs in (obs.items() if isinstance(obs, dict) else ()):
        shape = fs.get("shape") if isinstance(fs, dict) else None
        if fs.get("dtype") == "uint8" and isinstance(shape, list) and len(shape) == 3:
            try:
                out[str(name)] = (int(shape[0]), int(shape[1]), int(shape[2]))
            except (TypeError, ValueError):
                continue
    return out


class Refused(Exception):
    """A request whose cameras do not fit the negotiated spec or the byte limit: refused, the link lives."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def check(cameras: Mapping[str, CameraFrame], shapes: Mapping[str, ImageShape], max_bytes: int) -> dict[str, bytes]:
    """Raw HxWxC bytes of each frame, checked against the spec's ``shapes`` and ``max_bytes`` (what the
    frames come to, decompressed, all together; and what they take on the wire). :class:`Refused`
    (``bad_observation`` or ``observation_too_large``, from :mod:`.inference`) otherwise."""
    from .inference import BAD_OBSERVATION, OBSERVATION_TOO_LARGE

    total = sum(f.raw_size for f in cameras.values())
    wire = sum(len(f.data) for f in cameras.values())
    if total > max_bytes or wire > max_bytes:
        raise Refused(OBSERVATION_TOO_LARGE, f"the cameras come to {max(total, wire)} bytes, over "
                      f"limits.max_act_camera_bytes ({max_bytes})")
    out: dict[str, bytes] = {}
    for name, f in cameras.items():
        want = shapes.get(name)
        if want is None:
            raise Refused(BAD_OBSERVATION, f"camera {name!r} is not in this robot's spec (its cameras: "
                          f"{sorted(shapes)[:8]})")
        if f.shape != tuple(want):
            raise Refused(BAD_OBSERVATION, f"camera {name!r} is {'x'.join(map(str, f.shape))}, the robot's spec "
                          f"says {'x'.join(map(str, want))}")
        if f.codec == "raw":
            data = f.data
        else:
            try:
                data = compression.decompress(f.data, f.raw_size)
            except CompressionError as e:
                raise Refused(BAD_OBSERVATION, f"camera {name!r}: {e}") from None
        if len(data) != f.raw_size:  # raw: parse checked it; zstd: a frame that declares fewer bytes
            raise Refused(BAD_OBSERVATION, f"camera {name!r} holds {len(data)} bytes, not {math.prod(f.shape)}")
        out[name] = data
    return out
