"""The websocket client: hello, resume from the cloud's durable mark, stream
chunks under a credit window, take acks and policies, reconnect with backoff.

A thin asyncio layer around :class:`shared.protocol.EdgeConnection`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import Any, Awaitable, Callable

import websockets
from websockets.asyncio.client import connect

from shared.errors import FleetError
from shared.protocol import Ack, EdgeConnection, Limits, Policy, Reject, TunnelClose, TunnelData, TunnelOpen
from shared.config import LinkConfig

from .spool import Spool, SpoolCorrupt
from .handshake import normalize_pin, open_link, peer_sha256, tls_context
from .policy_download import PolicyDownload
from .tunnel import TunnelEndpoint

log = logging.getLogger("fleetrl.uplink")


class LinkRejected(FleetError):
    code = "rejected"


class Uplink:
    def __init__(
        self,
        cfg: LinkConfig,
        make_connection: Callable[[], EdgeConnection],
        spool: Spool,
        on_policy: Callable[[int, str, bytes], Awaitable[None]],
        status: Callable[[], dict[str, Any]],
        policy_version: Callable[[], int],
        limits: Limits,
        pin_sha256: str | None = None,
    ):
        self.cfg, self.make_connection, self.spool = cfg, make_connection, spool
        self.on_policy, self.status, self.policy_version, self.limits = on_policy, status, policy_version, limits
        self.connected = False
        self.reconnects = 0
        self.last_error = ""
        self.url = cfg.urls[0]
        self.download = PolicyDownload(limits.max_weights_bytes)
        self.pin = normalize_pin(pin_sha256)
        self.limit_seq: int = spool.last_seq  # send nothing past this (set by the recorder side)
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self.on_ack: Callable[[], Any] = lambda: None
        self._live: tuple[Any, EdgeConnection | None] = (None, None)
        self._ack_to = 0
        self._ack_arrived = asyncio.Event()

    async def close(self, reason: str) -> None:
        """Say why we are leaving (the learner logs it), then close the link."""
        ws, conn = self._live
        if ws is None or conn is None or conn.state.value != "open":
            return
        try:
            await asyncio.wait_for(ws.send(conn.reject("agent_stopping", reason)), 2)
            await asyncio.wait_for(ws.close(code=1001, reason="agent stopping"), 2)
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
            pass

    def wake(self) -> None:
        """New data in the spool (call on the event loop)."""
        self._wake.set()

    async def wait_drained(self) -> None:
        """Return once the cloud has acked everything spooled so far."""
        target = self.limit_seq
        while self.spool.acked_seq < target:
            self._acked.clear()
            await self._acked.wait()

    async def run(self) -> None:
        delay = self.cfg.reconnect_min_s
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except FleetError as e:  # refused, or the learner failed a check: say so loudly
                self.last_error = f"{e.code}: {e.message}"
                log.error("event=link_rejected code=%s message=%r", e.code, e.message)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException, ssl.SSLError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                log.info("event=link_down error=%r retry_in_s=%.2f", self.last_error, delay)
            else:
                delay = self.cfg.reconnect_min_s
            if self.connected:  # it had worked: start the backoff afresh
                delay = self.cfg.reconnect_min_s
            self.connected = False
            self.reconnects += 1
            urls = self.cfg.urls
            self.url = urls[(urls.index(self.url) + 1) % len(urls)]  # the next endpoint, if several
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    def _check_pin(self, ws: Any) -> None:
        got = peer_sha256(ws)
        if self.pin and got is not None and got != self.pin:
            raise LinkRejected(f"learner certificate sha256 {got} does not match the pinned {self.pin}", "pin_mismatch")

    async def _session(self) -> None:
        conn = self.make_connection()
        async with connect(
            self.url, ssl=tls_context(self.url, self.cfg.ca_file, bool(self.pin)), max_size=self.limits.max_frame_bytes, compression=None,
            open_timeout=self.cfg.connect_timeout_s, ping_interval=self.cfg.ping_interval_s,
            ping_timeout=self.cfg.ping_timeout_s, close_timeout=2,
        ) as ws:
            self._check_pin(ws)  # before a byte of ours goes out
            self._live = (ws, conn)
            msg = await open_link(ws, conn, self.cfg.connect_timeout_s, self.policy_version(), self.download.partial)
            if isinstance(msg, Reject):
                raise LinkRejected(msg.message, msg.code)
            await asyncio.to_thread(self.spool.adopt_cloud_mark, msg.acked_seq)
            self.connected = True
            log.info("event=link_up url=%s acked_seq=%d pending=%d", self.url, msg.acked_seq, self.spool.pending())
            tunnels = TunnelEndpoint(self.cfg.tunnel_allow, conn, ws.send)
            tasks = [
                asyncio.create_task(self._send_chunks(ws, conn)),
                asyncio.create_task(self._send_status(ws, conn)),
                asyncio.create_task(self._receive(ws, conn, tunnels)),
                asyncio.create_task(self._apply_acks()),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await tunnels.close()
            for t in done:
                t.result()  # the first task to end says why the session ended

    async def _send_chunks(self, ws: Any, conn: EdgeConnection) -> None:
        next_seq = self.spool.acked_seq + 1
        while True:
            self._wake.clear()
            next_seq = max(next_seq, self.spool.acked_seq + 1)
            while next_seq <= self.limit_seq and next_seq - self.spool.acked_seq - 1 < conn.max_inflight:
                lost = self.spool.lost_range(next_seq)
                if lost is not None:
                    await ws.send(conn.lost(next_seq, lost[1], lost[2]))
                    next_seq = lost[1] + 1
                    continue
                try:
                    rec = await asyncio.to_thread(self.spool.read, next_seq)
                except SpoolCorrupt:
                    continue  # now a lost range: reported on the next pass
                await ws.send(conn.chunk(rec.seq, rec.episode_id, rec.rows, rec.raw_size, rec.body_crc, rec.body))
                next_seq += 1
            await self._wake.wait()

    async def _send_status(self, ws: Any, conn: EdgeConnection) -> None:
        while True:
            await ws.send(conn.status(self.status()))
            await asyncio.sleep(self.cfg.status_interval_s)

    async def _apply_acks(self) -> None:
        """Forget acked chunks in the spool; acks that arrive while one is being
        persisted are folded into the next write (one fsync for a run of acks)."""
        while True:
            await self._ack_arrived.wait()
            self._ack_arrived.clear()
            await asyncio.to_thread(self.spool.ack, self._ack_to)
            self._acked.set()
            self.on_ack()
            self._wake.set()  # credit freed

    async def _receive(self, ws: Any, conn: EdgeConnection, tunnels: TunnelEndpoint) -> None:
        async for data in ws:
            msg = conn.receive(data if isinstance(data, bytes) else data.encode())
            if isinstance(msg, Ack):
                self._ack_to = max(self._ack_to, msg.seq)
                self._ack_arrived.set()
            elif isinstance(msg, Policy):
                try:
                    whole = self.download.add(msg)
                except FleetError as e:
                    log.error("event=policy_refused version=%d code=%s message=%r", msg.version, e.code, e.message)
                    continue
                if whole is not None:
                    await self.on_policy(*whole)
            elif isinstance(msg, (TunnelOpen, TunnelData, TunnelClose)):
                await tunnels.handle(msg)
            elif isinstance(msg, Reject):
                raise LinkRejected(msg.message, msg.code)
