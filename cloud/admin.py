"""Admin endpoints for the CLI on the learner host: reload the robot table,
and bridge a reverse tunnel. Loopback only, and only with the admin token
from ``<data_dir>/admin_token`` (mode 0600)."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
from pathlib import Path

from aiohttp import WSMsgType, web

from shared.config import is_loopback

from .gateway import BULK, CONTROL
from .keys import ADMIN_TOKEN, REGISTRY, ROBOTS

log = logging.getLogger("fleetrl.admin")
_streams = itertools.count(1)


def admin_token(data_dir: Path) -> str:
    path = data_dir / "admin_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(24).hex())
    return path.read_text().strip()


def _check(request: web.Request) -> None:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if not is_loopback(request.remote or "") or not hmac.compare_digest(given, request.app[ADMIN_TOKEN]):
        raise web.HTTPForbidden(text="admin endpoints need loopback and the admin token")


async def reload_robots(request: web.Request) -> web.Response:
    """Re-read robots.json; links of robots that may no longer connect close at once."""
    _check(request)
    app = request.app
    registry = app[REGISTRY]
    registry.reload()
    closed = []
    for rid, link in list(app[ROBOTS].items()):
        entry = registry.get(rid)
        refusal = entry.refusal() if entry is not None else (("revoked", "robot removed") if link.authenticated else None)
        if refusal is not None:
            link.outbox.put(CONTROL, link.conn.reject(*refusal))
            await asyncio.sleep(0)  # let the pump send the reason before the close
            await link.ws.close(code=4003, message=refusal[0].encode())
            closed.append(rid)
            log.warning("event=link_closed_by_admin robot_id=%s code=%s", rid, refusal[0])
    return web.json_response({"robots": len(registry.entries), "closed": closed})


async def tunnel(request: web.Request) -> web.WebSocketResponse:
    """One tunnelled TCP stream: this websocket <-> the robot's link <-> a port on the robot."""
    _check(request)
    robot, port = request.query.get("robot", ""), int(request.query.get("port", "0"))
    link = request.app[ROBOTS].get(robot)
    if link is None:
        raise web.HTTPNotFound(text=f"robot {robot!r} is not connected")
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    stream = next(_streams)
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
    link.tunnels[stream] = inbox
    link.outbox.put(CONTROL, link.conn.tunnel_open(stream, port))
    log.info("event=tunnel_open robot_id=%s port=%d stream=%d", robot, port, stream)

    async def robot_to_client() -> None:
        while (data := await inbox.get()) is not None:
            await ws.send_bytes(data)

    async def client_to_robot() -> None:
        async for m in ws:
            if m.type is WSMsgType.BINARY:
                link.outbox.put(BULK, link.conn.tunnel_data(stream, m.data))

    down, up = asyncio.create_task(robot_to_client()), asyncio.create_task(client_to_robot())
    try:
        await asyncio.wait([down, up], return_when=asyncio.FIRST_COMPLETED)
    finally:
        link.tunnels.pop(stream, None)
        robot_ended = down.done()
        for t in (down, up):
            t.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
        if not robot_ended and link.conn.state.value == "open":
            link.outbox.put(CONTROL, link.conn.tunnel_close(stream, "client closed"))
        await ws.close()
    return ws
