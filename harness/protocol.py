"""Sans-I/O protocol helpers for tests: a hand-made frame and a link opened in memory.

A test of a message type needs frames the encoder would never write (to check the
decoder refuses them) and a pair of connections already past the handshake."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

from shared.protocol import ActChunk, CloudConnection, EdgeConnection, Reject, State

HEADER = struct.Struct(">2sBBII")  # magic, frame version, type, meta length, body length


def raw_frame(type_: int, meta: dict[str, Any]) -> bytes:
    """A frame with ``meta`` as given, unchecked (no body)."""
    packed = msgpack.packb(meta, use_bin_type=True)
    return HEADER.pack(b"FL", 1, int(type_), len(packed), 0) + packed


def open_link(spec: dict[str, Any], features: tuple[str, ...]) -> tuple[EdgeConnection, CloudConnection]:
    """Robot ``arm-1`` and a learner past challenge, hello and welcome, the robot offering ``features``."""
    edge, cloud = EdgeConnection("arm-1", spec, [], features=features), CloudConnection()
    edge.receive(cloud.challenge())
    cloud.receive(edge.hello(policy_version=0))
    edge.receive(cloud.welcome("run", 0, 0))
    assert edge.state is State.OPEN and cloud.state is State.OPEN
    return edge, cloud


async def next_chunk(ws: Any, conn: EdgeConnection, timeout: float = 10.0) -> ActChunk:
    """The robot side's next ActChunk on a websocket (``ws.recv()``), skipping other messages; a Reject fails."""
    while True:
        msg = conn.receive(await asyncio.wait_for(ws.recv(), timeout))
        if isinstance(msg, ActChunk):
            return msg
        assert not isinstance(msg, Reject), msg
