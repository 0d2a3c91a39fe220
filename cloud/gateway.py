"""The robot websocket endpoint: a thin asyncio layer over CloudConnection and the
stream rules of :mod:`shared.protocol.stream` (ack order and credit, policy parts and
resume, the message rate); this file moves bytes and counts refusals.

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

from shared.auth import certificate_sha256
from shared.errors import FleetError, InvalidState, ProtocolError
from shared.lograte import LogLimiter
from shared.protocol import ActRequest, Chunk, CloudConnection, Hello, Lost, Reject, Status, TunnelClose, TunnelData
from shared.protocol.codes import RejectCode
from shared.protocol.stream import POLICY_PART_BYTES, AckOrder, PolicySender, RateLimit
from shared.schema import EpisodeSpec
from shared.tasks import until_first_done

from .groups import Group
from .keys import CONFIG, GROUPS, HANDSHAKES, LIMITS, POLICY_SERVER, REGISTRY, REJECTIONS, ROBOTS

log = logging.getLogger("fleetrl.gateway")
LOGS = LogLimiter(1.0)  # a flapping link or a full disk: one line per kind and robot per second

CONTROL, BULK = 0, 1
TUNNEL_QUEUE_BYTES = 4 << 20  # per tunnel stream, robot -> admin client, not yet sent on


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
    stored_key: bytes | None = None  # the key it proved: a rotation or removal closes this link
    since: float = field(default_factory=time.time)
    chunks: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    tunnels: dict[int, "TunnelInbox"] = field(default_factory=dict)
    group: Group | None = None  # its embodiment group: the only buffer and publisher this link uses


class TunnelInbox:
    """One tunnel stream's bytes from the robot, waiting for the admin client.

    Bounded: a robot that sends faster than the client reads must not grow
    the learner's memory; past ``max_bytes`` the stream is closed."""

    def __init__(self, max_bytes: int = TUNNEL_QUEUE_BYTES):
        self.q: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.bytes, self.max_bytes = 0, max_bytes

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False (nothing queued) when it would pass the bound."""
        if self.bytes + len(data) > self.max_bytes:
            return False
        self.bytes += len(data)
        self.q.put_nowait(data)
        return True

    def end(self) -> None:
        self.q.put_nowait(None)

    async def get(self) -> bytes | None:
        data = await self.q.get()
        if data is not None:
            self.bytes -= len(data)
        return data


def _refuse(app: web.Application, code: str) -> None:
    app[REJECTIONS][str(code)] += 1  # the plain wire string: a RejectCode and its value are one key


class _ClosedBeforeHello(Exception):
    """The peer went away before its hello: counted as such, not as a protocol fault."""


def _cause_first(t: asyncio.Task[Any]) -> int:
    """Order finished link tasks so the one that says why the link ended is raised:
    a failed write (hold) or a refusal before the connection errors it caused, and
    those before an InvalidState (a send on a link that already closed)."""
    if t.cancelled() or t.exception() is None:
        return 3
    e = t.exception()
    if isinstance(e, InvalidState):
        return 2
    return 0 if isinstance(e, OSError) and not isinstance(e, ConnectionError) else 1 if isinstance(e, FleetError) else 2


async def _say(ws: web.WebSocketResponse, data: bytes) -> None:
    """A last word (a reject) to a peer that may already be gone: losing it is not another fault."""
    if not ws.closed:
        try:
            await ws.send_bytes(data)
        except (ConnectionError, RuntimeError):
            pass


async def robot_ws(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    limits, server = app[LIMITS], app[CONFIG].server
    # aiohttp refuses a message of exactly max_msg_size; the documented limit is inclusive.
    ws = web.WebSocketResponse(max_msg_size=limits.max_frame_bytes + 1, heartbeat=server.heartbeat_s, compress=False)
    await ws.prepare(request)
    conn = CloudConnection(limits, channel=certificate_sha256(server.tls_cert))  # binds the robot's proof to our cert
    link: Link | None = None
    robot_id = None
    pending, source = app[HANDSHAKES], request.remote or "?"
    waiting = False  # holds a pending-handshake slot (until its hello authenticates)
    try:
        why = pending.admit(source)
        if why is not None:
            raise ProtocolError(f"too many links waiting to authenticate: {why}", RejectCode.TOO_MANY_HANDSHAKES)
        waiting = True
        if len(app[ROBOTS]) >= server.max_connections:
            raise ProtocolError(f"the learner serves at most {server.max_connections} robot links", RejectCode.TOO_MANY_CONNECTIONS)
        await ws.send_bytes(conn.challenge())
        first = await asyncio.wait_for(ws.receive(), server.handshake_timeout_s)
        if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED) or (
            first.type is WSMsgType.ERROR and isinstance(ws.exception(), ConnectionError)
        ):
            raise _ClosedBeforeHello(repr(ws.exception()) if first.type is WSMsgType.ERROR else "closed")
        if first.type is WSMsgType.ERROR:
            err = ws.exception()
            if "size" in str(err).lower():
                raise ProtocolError(f"a message larger than limits.max_frame_bytes ({limits.max_frame_bytes})",
                                    RejectCode.FRAME_TOO_LARGE)
            raise ProtocolError(f"websocket error: {err}", RejectCode.BAD_FRAME)
        if first.type is not WSMsgType.BINARY:
            raise ProtocolError("expected a binary hello", RejectCode.BAD_STATE)
        hello_cap = app[CONFIG].limits.max_hello_bytes
        if len(first.data) > hello_cap:  # read under max_frame_bytes: aiohttp fixes the limit at prepare
            raise ProtocolError(f"hello of {len(first.data)} bytes exceeds limits.max_hello_bytes ({hello_cap})", RejectCode.HELLO_TOO_LARGE)
        hello = conn.receive(first.data)
        assert isinstance(hello, Hello)
        robot_id = hello.robot_id
        stored, authenticated = _authenticate(app, conn, hello)
        pending.release(source)
        waiting = False
        if not hello.spec:  # `edge-agent enroll` proves its credential without a robot attached: not a fault
            log.info("event=credential_checked robot_id=%s authenticated=%s remote=%s", robot_id, authenticated, request.remote)
            await ws.send_bytes(conn.reject(RejectCode.CREDENTIAL_OK,
                                            "credential accepted; a hello without an episode spec only checks it"))
            return ws
        group = await app[GROUPS].resolve(robot_id, EpisodeSpec.from_dict(hello.spec), hello.units)
        buffer = group.buffer
        # Into the table before any await: every live link of a robot is either in the table
        # (where revocation and /status find it) or being closed by the link that replaced it.
        link = Link(robot_id, ws, conn, Outbox(), request.remote, authenticated, stored, group=group)
        lost_right = access_refusal(link, app[REGISTRY])  # the table may have changed while resolve() awaited
        if lost_right is not None:
            raise ProtocolError(lost_right[1], lost_right[0])
        old, app[ROBOTS][robot_id] = app[ROBOTS].get(robot_id), link
        if old is not None:
            log.warning("event=robot_reconnected_while_linked robot_id=%s (closing the older link)", robot_id)
            await old.ws.close(code=4000, message=b"replaced by a newer link")
        await ws.send_bytes(conn.welcome(buffer.run_id, buffer.hwm(robot_id), group.publisher.version, stored))
        LOGS.log(log, logging.INFO, ("robot_linked", robot_id),
                 "event=robot_linked robot_id=%s group=%s acked_seq=%d remote=%s authenticated=%s",
                 robot_id, group.name, buffer.hwm(robot_id), request.remote, authenticated)
        acks: asyncio.Queue[tuple[int, asyncio.Future[None]]] = asyncio.Queue()
        order = AckOrder(limits.max_inflight_chunks)
        aws = [link.outbox.pump(ws), _ack_in_order(conn, order, acks, link.outbox), _read(app, link, order, acks)]
        if authenticated or server.open:  # weights go only to a robot that proved itself
            aws.append(_push_policies(group, conn, link.outbox, hello))
        for t in sorted(await until_first_done(*aws), key=_cause_first):
            t.result()
    except _ClosedBeforeHello as e:  # a cut or a port probe, not a refusal
        _refuse(app, RejectCode.CLOSED_BEFORE_HELLO)
        LOGS.log(log, logging.INFO, ("closed_before_hello", request.remote),
                 "event=link_closed_before_hello remote=%s detail=%s", request.remote, e)
    except InvalidState as e:  # a send after the link closed (the robot said goodbye): gone, not a fault
        LOGS.log(log, logging.INFO, ("link_lost", robot_id), "event=link_lost robot_id=%s error=%r", robot_id, e)
    except FleetError as e:
        _refuse(app, e.code)
        LOGS.log(log, logging.WARNING, ("link_refused", robot_id, e.code),
                 "event=link_refused robot_id=%s remote=%s code=%s message=%r", robot_id, request.remote, e.code, e.message)
        await _say(ws, conn.reject(e.code, e.message))
    except asyncio.TimeoutError:
        _refuse(app, RejectCode.HANDSHAKE_TIMEOUT)
        LOGS.log(log, logging.WARNING, ("handshake_timeout", request.remote),
                 "event=link_refused remote=%s code=handshake_timeout", request.remote)
    except ConnectionError as e:
        LOGS.log(log, logging.INFO, ("link_lost", robot_id), "event=link_lost robot_id=%s error=%r", robot_id, e)
    except OSError as e:  # storage failed (disk full): nothing was acked; the robot holds its data
        LOGS.log(log, logging.ERROR, ("link_hold", robot_id),
                 "event=link_hold robot_id=%s error=%r action=robot_keeps_its_data_and_retries_with_backoff", robot_id, e)
        await _say(ws, conn.reject(RejectCode.HOLD, f"learner storage unavailable ({e.strerror or e}); keep the data and retry"))
    finally:
        if waiting:
            pending.release(source)
        if link is not None:
            _forget(app, link)
        await ws.close()
    return ws


def access_refusal(link: Link, registry: Any) -> tuple[str, str] | None:
    from .access import refusal  # access imports this module for Link

    return refusal(link, registry)


def _forget(app: web.Application, link: Link) -> None:
    """A link that ended: its tunnels end, and it leaves the table unless a newer link replaced it."""
    for q in link.tunnels.values():
        q.end()
    if app[ROBOTS].get(link.robot_id) is link:
        del app[ROBOTS][link.robot_id]
        app[POLICY_SERVER].forget(link.robot_id)


def _authenticate(app: web.Application, conn: CloudConnection, hello: Hello) -> tuple[bytes | None, bool]:
    """The robot's stored key if it proved its credential; refuse anyone who may not be let in.

    The source address plays no part: behind a proxy or a port-forward every client is 127.0.0.1."""
    entry = app[REGISTRY].get(hello.robot_id)
    if entry is None:
        if hello.proof or not app[CONFIG].server.open:
            raise ProtocolError("unknown robot or wrong credential", RejectCode.AUTH_FAILED)
        return None, False  # server.auth = "open" (a loopback-only learner: demo, tests)
    stored = bytes.fromhex(entry.stored_key)
    if not conn.verify(stored):
        raise ProtocolError("unknown robot or wrong credential", RejectCode.AUTH_FAILED)
    refusal = entry.refusal()
    if refusal is not None:
        raise ProtocolError(refusal[1], refusal[0])
    return stored, True


async def _read(app: web.Application, link: Link, order: AckOrder, acks: asyncio.Queue) -> None:
    assert link.group is not None
    ingest = link.group.ingest  # its own group's: rows of one spec go to the buffer of that spec
    bucket = RateLimit(app[CONFIG].limits.max_messages_per_s, time.monotonic())
    async for m in link.ws:
        if m.type is not WSMsgType.BINARY:
            if m.type is WSMsgType.ERROR:
                err = link.ws.exception()
                code = RejectCode.FRAME_TOO_LARGE if "size" in str(err).lower() else RejectCode.BAD_FRAME
                raise ProtocolError(f"websocket error: {err}", code)
            if m.type is WSMsgType.CLOSE:
                return
            raise ProtocolError("text frames are not part of the protocol", RejectCode.BAD_FRAME)
        bucket.admit(time.monotonic())
        msg = link.conn.receive(m.data)
        if isinstance(msg, (Chunk, Lost)):
            last = msg.last if isinstance(msg, Lost) else msg.seq
            order.accept(last)  # refuses a robot past its credit
            acks.put_nowait((last, await ingest.accept(link.robot_id, msg)))
            link.chunks += 1
        elif isinstance(msg, ActRequest):  # only from a robot whose hello offered inference (CloudConnection checks)
            app[POLICY_SERVER].submit(link, msg)
        elif isinstance(msg, Status):
            link.status = msg.values
        elif isinstance(msg, (TunnelData, TunnelClose)):
            q = link.tunnels.get(msg.stream)
            if q is None:
                continue
            if isinstance(msg, TunnelClose):
                q.end()
                if msg.reason:
                    log.info("event=tunnel_closed robot_id=%s stream=%d reason=%r", link.robot_id, msg.stream, msg.reason)
            elif not q.put(msg.body):  # the client does not keep up: close the stream, not the link
                del link.tunnels[msg.stream]
                q.end()
                why = f"tunnel stream over {q.max_bytes} bytes queued for a slow client"
                link.outbox.put(CONTROL, link.conn.tunnel_close(msg.stream, why))
                log.warning("event=tunnel_closed robot_id=%s stream=%d reason=%r", link.robot_id, msg.stream, why)
        elif isinstance(msg, Reject):
            log.info("event=robot_closed robot_id=%s code=%s message=%r", link.robot_id, msg.code, msg.message)
            return


async def _ack_in_order(conn: CloudConnection, order: AckOrder, acks: asyncio.Queue, outbox: Outbox) -> None:
    """Ack each write as it becomes durable, in the order :class:`AckOrder` releases them."""
    while True:
        seq, fut = await acks.get()
        await fut  # raises if the write failed: the link closes, the robot resends
        release = order.durable(seq)
        if release is not None:
            outbox.put(CONTROL, conn.ack(release))


async def _push_policies(group: Group, conn: CloudConnection, outbox: Outbox, hello: Hello) -> None:
    """Send each newer policy in parts (:class:`PolicySender` says which); a part waits for the previous
    one to leave, so acks overtake it and a newer version cuts in; a hello with a partial download resumes it.
    Sending starts while the learner still writes the blob; the last part waits for the write
    (:meth:`WeightPublisher.written`), so a robot never completes a version the learner could lose.
    Every link of the group sends the same encoded parts (:class:`cloud.policy_frames.PolicyFrames`); a link
    hears only its own group's publisher, so a robot never receives a policy of another embodiment."""
    publisher = group.publisher
    sender = PolicySender(hello.policy_version, (hello.partial_policy, hello.partial_bytes), POLICY_PART_BYTES)
    while True:
        blob = await publisher.wait_offered(sender.have)
        offset = sender.begin(blob.version, len(blob.data))
        if offset:
            log.info("event=policy_resume robot_id=%s version=%d offset=%d size=%d", hello.robot_id, blob.version, offset, len(blob.data))
        while (span := sender.next_part(publisher.offered)) is not None:
            if span[1] == len(blob.data) and not await publisher.written(blob):
                break  # its write failed or a newer one cut in: the robot keeps a partial, never this whole
            await outbox.send(BULK, publisher.frames.part(blob, *span))
