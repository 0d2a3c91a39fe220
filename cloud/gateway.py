"""The robot websocket endpoint: a thin asyncio layer over CloudConnection.

One outbox per link, control before bulk: acks and rejects overtake queued
policy bytes. Every refusal sends a reason code and a message, counts it,
then closes; nothing from a refused link is stored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from shared.config import is_loopback
from shared.errors import FleetError, ProtocolError
from shared.protocol import Chunk, CloudConnection, Hello, Lost, Reject, Status, TunnelClose, TunnelData
from shared.schema import EpisodeSpec

from .keys import BUFFER, CONFIG, INGEST, LIMITS, PUBLISHER, REGISTRY, REJECTIONS, ROBOTS

log = logging.getLogger("fleetrl.gateway")

CONTROL, BULK = 0, 1
POLICY_PART_BYTES = 4 << 20


class Outbox:
    def __init__(self) -> None:
        self.q: asyncio.PriorityQueue[tuple[int, int, bytes, asyncio.Future[None] | None]] = asyncio.PriorityQueue()
        self._n = itertools.count()

    def put(self, prio: int, data: bytes) -> None:
        self.q.put_nowait((prio, next(self._n), data, None))

    async def send(self, prio: int, data: bytes) -> None:
        """Queue and wait until sent: a bulk sender keeps one part in the queue, not the whole blob."""
        fut = asyncio.get_running_loop().create_future()
        self.q.put_nowait((prio, next(self._n), data, fut))
        await fut

    async def pump(self, ws: web.WebSocketResponse) -> None:
        while True:
            _, _, data, fut = await self.q.get()
            await ws.send_bytes(data)
            if fut is not None and not fut.done():
                fut.set_result(None)


@dataclass
class Link:
    """One live robot link, as the rest of the learner sees it."""

    robot_id: str
    ws: web.WebSocketResponse
    conn: CloudConnection
    outbox: Outbox
    remote: str | None
    authenticated: bool
    since: float = field(default_factory=time.time)
    chunks: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    tunnels: dict[int, asyncio.Queue[bytes | None]] = field(default_factory=dict)


class RateLimit:
    """Token bucket: ``rate`` messages per second, bursts of two seconds' worth."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.t = rate, 2 * rate, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(2 * self.rate, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _refuse(app: web.Application, code: str) -> None:
    app[REJECTIONS][code] += 1


async def robot_ws(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    limits, server = app[LIMITS], app[CONFIG].server
    ws = web.WebSocketResponse(max_msg_size=limits.max_frame_bytes, heartbeat=server.heartbeat_s, compress=False)
    await ws.prepare(request)
    conn = CloudConnection(limits)
    link: Link | None = None
    robot_id = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        if len(app[ROBOTS]) >= server.max_connections:
            raise ProtocolError(f"the learner serves at most {server.max_connections} robot links", "too_many_connections")
        await ws.send_bytes(conn.challenge())
        first = await asyncio.wait_for(ws.receive(), server.handshake_timeout_s)
        if first.type is WSMsgType.ERROR:
            raise ProtocolError(f"websocket error: {ws.exception()}", "frame_too_large")
        if first.type is not WSMsgType.BINARY:
            raise ProtocolError("expected a binary hello", "bad_state")
        hello = conn.receive(first.data)
        assert isinstance(hello, Hello)
        robot_id = hello.robot_id
        stored, authenticated = _authenticate(app, conn, hello, request.remote)
        buffer = app[BUFFER]
        buffer.check_spec(EpisodeSpec.from_dict(hello.spec))
        old = app[ROBOTS].get(robot_id)
        if old is not None:
            log.warning("event=robot_reconnected_while_linked robot_id=%s (closing the older link)", robot_id)
            await old.ws.close(code=4000, message=b"replaced by a newer link")
        await ws.send_bytes(conn.welcome(buffer.run_id, buffer.hwm(robot_id), app[PUBLISHER].version, stored))
        link = Link(robot_id, ws, conn, Outbox(), request.remote, authenticated)
        app[ROBOTS][robot_id] = link
        log.info("event=robot_linked robot_id=%s acked_seq=%d remote=%s authenticated=%s",
                 robot_id, buffer.hwm(robot_id), request.remote, authenticated)
        acks: asyncio.Queue[tuple[int, asyncio.Future[None]]] = asyncio.Queue()
        tasks = [
            asyncio.create_task(link.outbox.pump(ws)),
            asyncio.create_task(_ack_in_order(conn, acks, link.outbox)),
            asyncio.create_task(_push_policies(app, conn, link.outbox, hello)),
        ]
        reader = asyncio.create_task(_read(app, link, acks))
        done, _ = await asyncio.wait([reader, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    except FleetError as e:
        _refuse(app, e.code)
        log.warning("event=link_refused robot_id=%s remote=%s code=%s message=%r", robot_id, request.remote, e.code, e.message)
        if not ws.closed:
            await ws.send_bytes(conn.reject(e.code, e.message))
    except asyncio.TimeoutError:
        _refuse(app, "handshake_timeout")
        log.warning("event=link_refused remote=%s code=handshake_timeout", request.remote)
    except ConnectionError as e:
        log.info("event=link_lost robot_id=%s error=%r", robot_id, e)
    except OSError as e:  # storage failed (disk full): nothing was acked; the robot holds its data
        log.error("event=link_hold robot_id=%s error=%r", robot_id, e)
        if not ws.closed:
            await ws.send_bytes(conn.reject("hold", f"learner storage unavailable ({e.strerror or e}); keep the data and retry"))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if link is not None:
            for q in link.tunnels.values():
                q.put_nowait(None)
            if app[ROBOTS].get(link.robot_id) is link:
                del app[ROBOTS][link.robot_id]
        await ws.close()
    return ws


def _authenticate(app: web.Application, conn: CloudConnection, hello: Hello, remote: str | None) -> tuple[bytes | None, bool]:
    """The robot's stored key if it proved its credential; refuse anyone who may not be let in."""
    entry = app[REGISTRY].get(hello.robot_id)
    required = app[CONFIG].server.required_auth or not is_loopback(remote or "")
    if entry is None:
        if hello.proof or required:
            raise ProtocolError("unknown robot or wrong credential", "auth_failed")
        return None, False  # an unenrolled robot on loopback (demo, tests): allowed by server.auth = "auto"
    stored = bytes.fromhex(entry.stored_key)
    if not conn.verify(stored):
        raise ProtocolError("unknown robot or wrong credential", "auth_failed")
    refusal = entry.refusal()
    if refusal is not None:
        raise ProtocolError(refusal[1], refusal[0])
    return stored, True


async def _read(app: web.Application, link: Link, acks: asyncio.Queue) -> None:
    ingest, limits = app[INGEST], app[LIMITS]
    bucket = RateLimit(app[CONFIG].limits.max_messages_per_s)
    async for m in link.ws:
        if m.type is not WSMsgType.BINARY:
            if m.type is WSMsgType.ERROR:
                err = link.ws.exception()
                code = "frame_too_large" if "size" in str(err).lower() else "bad_frame"
                raise ProtocolError(f"websocket error: {err}", code)
            if m.type is WSMsgType.CLOSE:
                return
            raise ProtocolError("text frames are not part of the protocol", "bad_frame")
        if not bucket.take():
            raise ProtocolError(f"more than {bucket.rate:g} messages per second", "rate_limited")
        msg = link.conn.receive(m.data)
        if isinstance(msg, (Chunk, Lost)):
            if acks.qsize() >= 2 * limits.max_inflight_chunks:
                raise ProtocolError("robot ignores its credit window", "too_many_inflight")
            fut = await ingest.accept(link.robot_id, msg)
            acks.put_nowait((msg.last if isinstance(msg, Lost) else msg.seq, fut))
            link.chunks += 1
        elif isinstance(msg, Status):
            link.status = msg.values
        elif isinstance(msg, (TunnelData, TunnelClose)):
            q = link.tunnels.get(msg.stream)
            if q is not None:
                q.put_nowait(msg.body if isinstance(msg, TunnelData) else None)
                if isinstance(msg, TunnelClose) and msg.reason:
                    log.info("event=tunnel_closed robot_id=%s stream=%d reason=%r", link.robot_id, msg.stream, msg.reason)
        elif isinstance(msg, Reject):
            log.info("event=robot_closed robot_id=%s code=%s message=%r", link.robot_id, msg.code, msg.message)
            return


async def _ack_in_order(conn: CloudConnection, acks: asyncio.Queue, outbox: Outbox) -> None:
    while True:
        seq, fut = await acks.get()
        await fut  # raises if the write failed: the link closes, the robot resends
        outbox.put(CONTROL, conn.ack(seq))


async def _push_policies(app: web.Application, conn: CloudConnection, outbox: Outbox, hello: Hello) -> None:
    """Send each newer policy in parts; a part waits for the previous one to leave, so acks
    overtake it and a newer version cuts in; a hello with a partial download resumes it."""
    publisher = app[PUBLISHER]
    have = hello.policy_version
    resume = (hello.partial_policy, hello.partial_bytes)
    part = POLICY_PART_BYTES
    while True:
        blob = await publisher.wait_newer(have)
        offset = resume[1] if resume[0] == blob.version and resume[1] < len(blob.data) else 0
        if offset:
            log.info("event=policy_resume robot_id=%s version=%d offset=%d size=%d", hello.robot_id, blob.version, offset, len(blob.data))
        resume = (0, 0)
        view = memoryview(blob.data)
        while offset < len(blob.data) and publisher.version == blob.version:
            await outbox.send(BULK, conn.policy(blob.version, blob.sha256, len(blob.data), offset, view[offset : offset + part]))
            offset += part
        if offset >= len(blob.data):
            have = blob.version
