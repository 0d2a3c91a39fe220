"""Binary framing: a 12-byte header, a msgpack meta map, an opaque body.

    magic "FL" | frame version u8 | type u8 | meta length u32 | body length u32

One frame travels as one websocket binary message; the header makes a frame
self-checking when it is stored or relayed outside a websocket too.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import ProtocolError
from .codes import RejectCode
from .limits import Limits

MAGIC = b"FL"
FRAME_VERSION = 1
HEADER = struct.Struct(">2sBBII")


class MsgType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    CHUNK = 3
    ACK = 4
    POLICY = 5
    STATUS = 6
    REJECT = 7
    LOST = 8
    CHALLENGE = 9
    TUNNEL_OPEN = 10
    TUNNEL_DATA = 11
    TUNNEL_CLOSE = 12
    COMMAND = 13  # only to a robot whose hello lists the feature (shared.protocol.commands)
    ACT_REQUEST = 14  # only from a robot whose hello lists the feature (shared.protocol.inference)
    ACT_CHUNK = 15  # only to such a robot


@dataclass(frozen=True)
class Frame:
    type: MsgType
    meta: dict[str, Any]
    body: bytes = b""


def encode_frame(type_: MsgType, meta: dict[str, Any], body: bytes = b"") -> bytes:
    packed: bytes = msgpack.packb(meta, use_bin_type=True)
    return HEADER.pack(MAGIC, FRAME_VERSION, int(type_), len(packed), len(body)) + packed + body


def decode_frame(data: bytes, limits: Limits) -> Frame:
    if len(data) > limits.max_frame_bytes:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds limit {limits.max_frame_bytes}", RejectCode.FRAME_TOO_LARGE)
    if len(data) < HEADER.size:
        raise ProtocolError(f"frame of {len(data)} bytes is shorter than its header", RejectCode.TRUNCATED)
    magic, version, type_, meta_len, body_len = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("frame does not start with the fleetrl magic", RejectCode.BAD_MAGIC)
    if version != FRAME_VERSION:
        raise ProtocolError(f"frame version {version} not supported (supported: {FRAME_VERSION})", RejectCode.UNSUPPORTED_VERSION)
    try:
        mtype = MsgType(type_)
    except ValueError:
        raise ProtocolError(f"unknown message type {type_}", RejectCode.UNKNOWN_TYPE) from None
    if meta_len > limits.max_meta_bytes:
        raise ProtocolError(f"frame meta of {meta_len} bytes exceeds limit {limits.max_meta_bytes}", RejectCode.FRAME_TOO_LARGE)
    if HEADER.size + meta_len + body_len != len(data):
        raise ProtocolError(
            f"frame lengths ({meta_len}+{body_len}) do not match its size ({len(data) - HEADER.size})", "truncated"
        )
    raw_meta = data[HEADER.size : HEADER.size + meta_len]
    try:
        meta = msgpack.unpackb(
            raw_meta, raw=False, strict_map_key=True,
            max_str_len=meta_len, max_bin_len=meta_len, max_array_len=meta_len, max_map_len=meta_len,
        )
    except Exception as e:  # msgpack raises a zoo of types on bad input
        raise ProtocolError(f"frame meta is not valid msgpack: {type(e).__name__}", RejectCode.BAD_META) from None
    if not isinstance(meta, dict):
        raise ProtocolError("frame meta must be a map", RejectCode.BAD_META)
    return Frame(mtype, meta, bytes(data[HEADER.size + meta_len :]))
