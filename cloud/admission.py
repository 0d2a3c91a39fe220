"""Admission before a robot has proved who it is: sockets and handshakes are
counted per source address and in total, and a socket must finish its HTTP
request headers within a deadline.

Anyone on the internet can open sockets to the robot port. Without these
caps each one costs a file descriptor, a parser and (after the upgrade) a
receive buffer for as long as the peer likes; with them an attacker holds at
most ``per_source`` of each from one address and the learner at most
``total``, and a socket that dawdles is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections import Counter
from typing import Any, Callable

from aiohttp import web

from shared.lograte import LogLimiter

log = logging.getLogger("fleetrl.admission")
LOGS = LogLimiter(1.0)  # a flood must not flood the log: one line per kind and address per second

HEADER_END = b"\r\n\r\n"


def source_key(address: str) -> str:
    """What counts as one source: an IPv4 address, or an IPv6 /64 (one host usually holds a whole
    /64, so counting single IPv6 addresses would let it open sockets without limit)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is an IPv4 peer on a dual-stack socket
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SourceCounter:
    """Slots held per source (see :func:`source_key`), at most ``per_source`` each and ``total`` in all."""

    def __init__(self, total: int, per_source: int):
        self.total, self.per_source = total, per_source
        self.by_source: Counter[str] = Counter()
        self.held = 0
        self.refused = 0

    def admit(self, address: str) -> str | None:
        """Take a slot for ``address``'s source; None on success, else why not."""
        source = source_key(address)
        if self.by_source[source] >= self.per_source:
            self.refused += 1
            return f"{self.by_source[source]} already open from {source} (at most {self.per_source})"
        if self.held >= self.total:
            self.refused += 1
            return f"{self.held} already open (at most {self.total})"
        self.by_source[source] += 1
        self.held += 1
        return None

    def release(self, address: str) -> None:
        source = source_key(address)
        self.held -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]


class _Guarded(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: refuse over the caps at accept,
    close a socket whose first request headers are not in by the deadline."""

    def __init__(self, inner: asyncio.Protocol, caps: SourceCounter, header_timeout_s: float):
        self.inner, self.caps, self.header_timeout_s = inner, caps, header_timeout_s
        self.source: str | None = None
        self.transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the end of what came so far, to find the header end across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        why = self.caps.admit(source)
        if why is not None:
            LOGS.log(log, logging.WARNING, ("socket_refused", source), "event=socket_refused remote=%s reason=%r", source, why)
            transport.abort()
            return
        self.source, self.transport = source, transport
        self._deadline = asyncio.get_running_loop().call_later(self.header_timeout_s, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._deadline = None
        LOGS.log(log, logging.WARNING, ("socket_closed", self.source),
                 "event=socket_closed remote=%s reason=request headers not complete within %gs", self.source, self.header_timeout_s)
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows and releases the slot

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if HEADER_END in seen:
                self._deadline.cancel()
                self._deadline = None
            self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.source is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.source is None:
            return  # refused at accept: aiohttp never saw it
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.caps.release(self.source)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site (aiohttp's documented extension point) whose sockets pass :class:`_Guarded`.

    TLS handshakes run before a socket is counted; they get the same deadline
    (``ssl_handshake_timeout``)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, caps: SourceCounter,
                 header_timeout_s: float, ssl_context: Any = None):
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self.caps, self.header_timeout_s = caps, header_timeout_s

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.Protocol] = lambda: _Guarded(server(), self.caps, self.header_timeout_s)  # noqa: E731
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self.header_timeout_s if self._ssl_context else None)


def robot_site(runner: web.BaseRunner, server_cfg: Any, host: str | None = None, port: int | None = None,
               ssl_context: Any = None) -> GuardedSite:
    """The robot port's site with the caps of ``server_cfg`` (a ServerConfig)."""
    return GuardedSite(
        runner, host or server_cfg.host, server_cfg.port if port is None else port, ssl_context=ssl_context,
        caps=SourceCounter(server_cfg.max_sockets, server_cfg.max_sockets_per_source),
        header_timeout_s=server_cfg.header_timeout_s,
    )


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def tls_context(server_cfg: Any) -> ssl.SSLContext | None:
    """The server-side TLS context of ``server.tls_cert``/``tls_key``, if set."""
    if server_cfg.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server_cfg.tls_cert, server_cfg.tls_key)
    return ctx


async def serve_robot_port(app: web.Application, server_cfg: Any, shutdown_timeout: float) -> tuple[web.AppRunner, str]:
    """Start ``app`` on the robot-facing port of ``server_cfg`` (a learner's or a shard's): TLS when
    configured, the socket caps and header deadline, and a keep-alive no longer than that deadline
    (an idle or half-sent later request). Returns the runner and the robots' websocket URL."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout, access_log=None,
                           keepalive_timeout=server_cfg.header_timeout_s)
    await runner.setup()
    try:
        tls = tls_context(server_cfg)
        await robot_site(runner, server_cfg, ssl_context=tls).start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    return runner, f"{'wss' if tls else 'ws'}://{url_host(host)}:{port}/ws"

