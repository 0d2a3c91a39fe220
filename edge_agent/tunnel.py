"""The robot's end of the reverse tunnel: the cloud asks for a TCP stream to a
local port; only ports on ``link.tunnel_allow`` are opened, on 127.0.0.1.

The uplink's receive loop hands every tunnel message here, between acks and
policies, so nothing here waits on a local service: connecting happens in a
task, and bytes for the service are written without waiting for it to read.
Each stream buffers at most ``STREAM_BUFFER`` bytes the service has not taken;
past that the stream is closed with a reason (the protocol has no per-stream
flow control to slow the cloud down instead). At most ``max_streams`` streams
are open at once (``link.tunnel_max_streams``); more are refused.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from shared.protocol import EdgeConnection, TunnelClose, TunnelData, TunnelOpen

log = logging.getLogger("fleetrl.tunnel")

STREAM_BUFFER = 8 << 20  # bytes one stream may hold for a local service that is slower than the link
MAX_STREAMS = 16
CLOSE_GRACE_S = 10.0  # a stream the cloud closed gets this long to hand its last bytes over, then is cut


@dataclass
class _Stream:
    port: int
    writer: asyncio.StreamWriter | None = None  # None while connecting
    early: list[bytes] = field(default_factory=list)  # bytes that came before the connection was up
    early_bytes: int = 0
    ended: str = ""  # "close": the cloud closed it (flush, then close); "abort": drop it now

    def buffered(self) -> int:
        return self.early_bytes + (self.writer.transport.get_write_buffer_size() if self.writer else 0)

    def end(self, how: str) -> None:
        """Close now if connected; else the connecting task does it once the connection is up."""
        self.ended = self.ended or how
        if self.writer is None:
            return
        transport = self.writer.transport
        if self.ended == "abort":
            transport.abort()  # frees the buffer now
        else:
            self.writer.close()  # flushes what is buffered, but not forever
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)


class TunnelEndpoint:
    def __init__(self, allow: list[int], conn: EdgeConnection, send: Callable[[bytes], Awaitable[None]],
                 max_streams: int = MAX_STREAMS, max_buffer: int | None = None):
        self.allow, self.conn, self.send = set(allow), conn, send
        self.max_streams = max_streams
        self.max_buffer = STREAM_BUFFER if max_buffer is None else max_buffer
        self.streams: dict[int, _Stream] = {}  # open or connecting; a closed stream leaves at once
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, msg: TunnelOpen | TunnelData | TunnelClose) -> None:
        """Never waits on a local service; it only awaits sending a refusal or close to the cloud."""
        if isinstance(msg, TunnelOpen):
            await self._open(msg)
        elif isinstance(msg, TunnelData):
            s = self.streams.get(msg.stream)
            if s is None:
                return
            if s.writer is None:
                s.early.append(msg.body)
                s.early_bytes += len(msg.body)
            else:
                s.writer.write(msg.body)  # no drain: a stalled service must not stall acks and policies
            if s.buffered() > self.max_buffer:
                log.warning("event=tunnel_overflow stream=%d port=%d buffered=%d limit=%d",
                            msg.stream, s.port, s.buffered(), self.max_buffer)
                del self.streams[msg.stream]
                s.end("abort")
                await self.send(self.conn.tunnel_close(
                    msg.stream, f"port {s.port}: the local service is not reading; more than {self.max_buffer} bytes waiting"))
        else:
            s = self.streams.pop(msg.stream, None)
            if s is not None:
                s.end("close")

    async def _open(self, msg: TunnelOpen) -> None:
        if msg.port not in self.allow:
            log.warning("event=tunnel_refused port=%d allowed=%s", msg.port, sorted(self.allow))
            await self.send(self.conn.tunnel_close(msg.stream, f"port {msg.port} is not on this robot's tunnel allowlist"))
            return
        if msg.stream in self.streams:
            await self.send(self.conn.tunnel_close(msg.stream, f"stream {msg.stream} is already open"))
            return
        if len(self.streams) >= self.max_streams:
            log.warning("event=tunnel_refused port=%d stream=%d reason=too_many_streams open=%d",
                        msg.port, msg.stream, len(self.streams))
            await self.send(self.conn.tunnel_close(
                msg.stream, f"too many tunnel streams open on this robot ({self.max_streams}, link.tunnel_max_streams)"))
            return
        s = self.streams[msg.stream] = _Stream(msg.port)
        task = asyncio.create_task(self._run(msg.stream, s))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, stream: int, s: _Stream) -> None:
        """Connect, hand over what came early, then copy the service's bytes to the cloud."""
        try:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            except OSError as e:
                if self.streams.get(stream) is s:
                    del self.streams[stream]
                    await self.send(self.conn.tunnel_close(stream, f"port {s.port}: {e.strerror or e}"))
                return
            s.writer = writer
            for part in s.early:
                writer.write(part)
            s.early, s.early_bytes = [], 0
            if s.ended:  # closed (or dropped) by the cloud while connecting
                s.end(s.ended)
                return
            log.info("event=tunnel_open port=%d stream=%d", s.port, stream)
            while data := await reader.read(65536):
                await self.send(self.conn.tunnel_data(stream, data))
            if self.streams.get(stream) is s:
                await self.send(self.conn.tunnel_close(stream, "eof"))
        except Exception as e:  # noqa: BLE001 - the link went away: nothing to tell
            log.info("event=tunnel_ended stream=%d error=%r", stream, e)
        finally:
            if self.streams.get(stream) is s:
                del self.streams[stream]
            s.end("close")

    async def close(self) -> None:
        for s in self.streams.values():
            s.end("abort")
        self.streams.clear()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
