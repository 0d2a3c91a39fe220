"""The websocket client: hello, resume from the cloud's durable mark, stream
chunks under a credit window, take acks and policies, reconnect with backoff.

A thin asyncio layer around :class:`shared.protocol.EdgeConnection`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Awaitable, Callable

import websockets
from websockets.asyncio.client import connect

from shared.errors import FleetError
from shared.protocol import EdgeConnection, Limits, Policy, Reject
from shared.protocol.messages import Ack, Welcome
from shared.config import LinkConfig

from .spool import Spool, SpoolCorrupt

log = logging.getLogger("fleetrl.uplink")


class LinkRejected(FleetError):
    code = "rejected"


class Uplink:
    def __init__(
        self,
        cfg: LinkConfig,
        make_connection: Callable[[], EdgeConnection],
        spool: Spool,
        on_policy: Callable[[Policy], Awaitable[None]],
        status: Callable[[], dict[str, Any]],
        policy_version: Callable[[], int],
        limits: Limits,
    ):
        self.cfg, self.make_connection, self.spool = cfg, make_connection, spool
        self.on_policy, self.status, self.policy_version, self.limits = on_policy, status, policy_version, limits
        self.connected = False
        self.reconnects = 0
        self.last_error = ""
        self.url = cfg.urls[0]
        self.limit_seq: int = spool.last_seq  # send nothing past this (set by the recorder side)
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self.on_ack: Callable[[], Any] = lambda: None

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
            except LinkRejected as e:
                self.last_error = f"{e.code}: {e.message}"
                log.error("event=link_rejected code=%s message=%r", e.code, e.message)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException, FleetError) as e:
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

    async def _session(self) -> None:
        conn = self.make_connection()
        async with connect(
            self.url, max_size=self.limits.max_frame_bytes, compression=None,
            open_timeout=self.cfg.connect_timeout_s, ping_interval=self.cfg.ping_interval_s,
            ping_timeout=self.cfg.ping_timeout_s, close_timeout=2,
        ) as ws:
            await ws.send(conn.hello(self.policy_version()))
            first = conn.receive(await asyncio.wait_for(ws.recv(), self.cfg.connect_timeout_s))
            if isinstance(first, Reject):
                raise LinkRejected(first.message, first.code)
            assert isinstance(first, Welcome)
            await asyncio.to_thread(self.spool.adopt_cloud_mark, first.acked_seq)
            self.connected = True
            log.info("event=link_up url=%s acked_seq=%d pending=%d", self.url, first.acked_seq, self.spool.pending())
            tasks = [
                asyncio.create_task(self._send_chunks(ws, conn)),
                asyncio.create_task(self._send_status(ws, conn)),
                asyncio.create_task(self._receive(ws, conn)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
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

    async def _receive(self, ws: Any, conn: EdgeConnection) -> None:
        async for data in ws:
            msg = conn.receive(data if isinstance(data, bytes) else data.encode())
            if isinstance(msg, Ack):
                await asyncio.to_thread(self.spool.ack, msg.seq)
                self._acked.set()
                self.on_ack()
                self._wake.set()  # credit freed
            elif isinstance(msg, Policy):
                await self.on_policy(msg)
            elif isinstance(msg, Reject):
                raise LinkRejected(msg.message, msg.code)
