"""The robot's end of the reverse tunnel: the cloud asks for a TCP stream to a
local port; only ports on ``link.tunnel_allow`` are opened, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from shared.protocol import EdgeConnection, TunnelClose, TunnelData, TunnelOpen

log = logging.getLogger("fleetrl.tunnel")


class TunnelEndpoint:
    def __init__(self, allow: list[int], conn: EdgeConnection, send: Callable[[bytes], Awaitable[None]]):
        self.allow, self.conn, self.send = set(allow), conn, send
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, msg: TunnelOpen | TunnelData | TunnelClose) -> None:
        if isinstance(msg, TunnelOpen):
            await self._open(msg)
        elif isinstance(msg, TunnelData):
            w = self.writers.get(msg.stream)
            if w is not None:
                w.write(msg.body)
                await w.drain()
        else:
            w = self.writers.pop(msg.stream, None)
            if w is not None:
                w.close()

    async def _open(self, msg: TunnelOpen) -> None:
        if msg.port not in self.allow:
            log.warning("event=tunnel_refused port=%d allowed=%s", msg.port, sorted(self.allow))
            await self.send(self.conn.tunnel_close(msg.stream, f"port {msg.port} is not on this robot's tunnel allowlist"))
            return
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", msg.port)
        except OSError as e:
            await self.send(self.conn.tunnel_close(msg.stream, f"port {msg.port}: {e.strerror or e}"))
            return
        self.writers[msg.stream] = writer
        log.info("event=tunnel_open port=%d stream=%d", msg.port, msg.stream)
        task = asyncio.create_task(self._pump(msg.stream, reader))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _pump(self, stream: int, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                await self.send(self.conn.tunnel_data(stream, data))
            await self.send(self.conn.tunnel_close(stream, "eof"))
        except Exception as e:  # the link went away: nothing to tell
            log.info("event=tunnel_ended stream=%d error=%r", stream, e)
        finally:
            w = self.writers.pop(stream, None)
            if w is not None:
                w.close()

    async def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
