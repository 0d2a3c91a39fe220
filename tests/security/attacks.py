"""Hostile clients for the security tests: real websockets, crafted bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from shared.chunk import StepRecord, build_batch, encode_chunk
from shared.protocol import Challenge, EdgeConnection, Reject, Welcome
from shared.schema import EpisodeSpec


def fetch_spec() -> EpisodeSpec:
    import hal_drivers

    return hal_drivers.create("mujoco_fetch", {"seed": 0}).describe().episode_spec()


def chunk_body(spec: EpisodeSpec, robot_id: str, n: int = 5) -> tuple[str, int, int, bytes]:
    obs = {k: np.zeros(v.shape, np.float32) for k, v in spec.observation.items()}
    steps = [StepRecord(obs, np.zeros(spec.action_dim, np.float32), 0.0, obs, False, False, step=i) for i in range(n)]
    batch = build_batch(spec, robot_id, "evil-episode", steps)
    body = encode_chunk(batch)
    return "evil-episode", batch.num_rows, batch.nbytes, body


async def handshake(url: str, robot_id: str, spec: EpisodeSpec, credential: str | None = None):
    """Open a link the honest way; returns (ws, conn, first reply after hello)."""
    ws = await connect(url, compression=None, open_timeout=5, max_size=None)
    conn = EdgeConnection(robot_id, spec.to_dict(), [], credential=credential)
    first = conn.receive(await asyncio.wait_for(ws.recv(), 5))
    if isinstance(first, Reject):  # refused before the challenge (e.g. too many links)
        return ws, conn, first
    await ws.send(conn.hello(0))
    reply = conn.receive(await asyncio.wait_for(ws.recv(), 5))
    return ws, conn, reply


async def refusal(ws: Any, timeout: float = 5.0) -> tuple[str, bool]:
    """The Reject code the learner sends, and whether it then closed the link."""
    from shared.protocol import decode_frame, Limits
    from shared.protocol.messages import PARSERS

    code = ""
    try:
        while True:
            data = await asyncio.wait_for(ws.recv(), timeout)
            f = decode_frame(data, Limits(max_frame_bytes=1 << 30))
            msg = PARSERS[f.type].parse(f)
            if isinstance(msg, Reject):
                code = msg.code
    except Exception:
        pass
    return code, ws.state.name == "CLOSED"


__all__ = ["Challenge", "Welcome", "chunk_body", "fetch_spec", "handshake", "refusal"]


async def outcome(ws: Any, reply: Any, timeout: float = 5.0) -> tuple[str, bool]:
    """Like :func:`refusal`, counting a Reject already received as the handshake reply."""
    code, closed = await refusal(ws, timeout)
    return (reply.code if isinstance(reply, Reject) else code), closed
