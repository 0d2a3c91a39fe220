"""The robot websocket endpoint: a thin asyncio layer over CloudConnection.

One outbox per link, control before bulk: acks and rejects overtake queued
policy bytes. Every refusal sends a reason code and a message, then closes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from shared.errors import FleetError, ProtocolError
from shared.protocol import Chunk, CloudConnection, Hello, Lost, Reject, Status
from shared.schema import EpisodeSpec

from .keys import BUFFER, CONFIG, INGEST, LIMITS, PUBLISHER, ROBOTS

log = logging.getLogger("fleetrl.gateway")

CONTROL, BULK = 0, 1
HANDSHAKE_TIMEOUT_S = 10.0


class _Outbox:
    def __init__(self) -> None:
        self.q: asyncio.PriorityQueue[tuple[int, int, bytes]] = asyncio.PriorityQueue()
        self._n = itertools.count()

    def put(self, prio: int, data: bytes) -> None:
        self.q.put_nowait((prio, next(self._n), data))

    async def pump(self, ws: web.WebSocketResponse) -> None:
        while True:
            _, _, data = await self.q.get()
            await ws.send_bytes(data)


async def robot_ws(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    limits = app[LIMITS]
    ws = web.WebSocketResponse(max_msg_size=limits.max_frame_bytes, heartbeat=app[CONFIG].server.heartbeat_s, compress=False)
    await ws.prepare(request)
    conn = CloudConnection(limits)
    robot_id = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        first = await asyncio.wait_for(ws.receive(), HANDSHAKE_TIMEOUT_S)
        if first.type is not WSMsgType.BINARY:
            raise ProtocolError("expected a binary hello", "bad_state")
        hello = conn.receive(first.data)
        assert isinstance(hello, Hello)
        robot_id = hello.robot_id
        buffer = app[BUFFER]
        buffer.check_spec(EpisodeSpec.from_dict(hello.spec))
        if robot_id in app[ROBOTS]:
            log.warning("event=robot_reconnected_while_linked robot_id=%s (closing the older link)", robot_id)
            old = app[ROBOTS][robot_id]["ws"]
            await old.close(code=4000, message=b"replaced by a newer link")
        outbox = _Outbox()
        await ws.send_bytes(conn.welcome(buffer.run_id, buffer.hwm(robot_id), app[PUBLISHER].version))
        info = {"ws": ws, "since": time.time(), "status": {}, "remote": request.remote, "chunks": 0}
        app[ROBOTS][robot_id] = info
        log.info("event=robot_linked robot_id=%s acked_seq=%d remote=%s", robot_id, buffer.hwm(robot_id), request.remote)
        acks: asyncio.Queue[tuple[int, asyncio.Future[None]]] = asyncio.Queue()
        tasks = [
            asyncio.create_task(outbox.pump(ws)),
            asyncio.create_task(_ack_in_order(conn, acks, outbox)),
            asyncio.create_task(_push_policies(app, conn, outbox, hello.policy_version)),
        ]
        reader = asyncio.create_task(_read(app, ws, conn, robot_id, acks, info))
        done, _ = await asyncio.wait([reader, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    except FleetError as e:
        log.warning("event=link_refused robot_id=%s code=%s message=%r", robot_id, e.code, e.message)
        if not ws.closed:
            await ws.send_bytes(conn.reject(e.code, e.message))
    except (asyncio.TimeoutError, ConnectionError) as e:
        log.info("event=link_lost robot_id=%s error=%r", robot_id, e)
    except OSError as e:  # storage failed (disk full): nothing was acked; the robot holds its data
        log.error("event=link_hold robot_id=%s error=%r", robot_id, e)
        if not ws.closed:
            await ws.send_bytes(conn.reject("hold", f"learner storage unavailable ({e.strerror or e}); keep the data and retry"))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if robot_id is not None and app[ROBOTS].get(robot_id, {}).get("ws") is ws:
            del app[ROBOTS][robot_id]
        await ws.close()
    return ws


async def _read(app: web.Application, ws: web.WebSocketResponse, conn: CloudConnection, robot_id: str,
                acks: asyncio.Queue, info: dict[str, Any]) -> None:
    ingest, limits = app[INGEST], app[LIMITS]
    async for m in ws:
        if m.type is not WSMsgType.BINARY:
            if m.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                return
            raise ProtocolError("text frames are not part of the protocol", "bad_frame")
        msg = conn.receive(m.data)
        if isinstance(msg, (Chunk, Lost)):
            if acks.qsize() >= 2 * limits.max_inflight_chunks:
                raise ProtocolError("robot ignores its credit window", "too_many_inflight")
            fut = await ingest.accept(robot_id, msg)
            acks.put_nowait((msg.last if isinstance(msg, Lost) else msg.seq, fut))
            info["chunks"] += 1
        elif isinstance(msg, Status):
            info["status"] = msg.values
        elif isinstance(msg, Reject):
            log.info("event=robot_closed robot_id=%s code=%s message=%r", robot_id, msg.code, msg.message)
            return


async def _ack_in_order(conn: CloudConnection, acks: asyncio.Queue, outbox: _Outbox) -> None:
    while True:
        seq, fut = await acks.get()
        await fut  # raises if the write failed: the link closes, the robot resends
        outbox.put(CONTROL, conn.ack(seq))


async def _push_policies(app: web.Application, conn: CloudConnection, outbox: _Outbox, have: int) -> None:
    publisher = app[PUBLISHER]
    while True:
        blob = await publisher.wait_newer(have)
        outbox.put(BULK, conn.policy(blob.version, blob.sha256, blob.data))
        have = blob.version
