"""The admin listener for the CLI on the learner host: status, reload the robot
table, bridge a reverse tunnel. Its own socket on loopback (``[admin]``), never
the robot-facing port, and every request needs the admin token from
``<data_dir>/admin_token`` (mode 0600)."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
from pathlib import Path
from typing import AsyncIterator

from aiohttp import WSMsgType, web

from shared.config import is_loopback
from shared.errors import ConfigError
from shared.tasks import until_first_done

from . import access
from .admission import url_host
from .dashboard import SNAPSHOT, cookie_ok, dashboard_routes, sample_history
from .gateway import BULK, CONTROL, TunnelInbox
from .keys import ADMIN_TOKEN, CONFIG, GROUPS, REGISTRY, ROBOTS
from .robot_commands import command_routes

log = logging.getLogger("fleetrl.admin")
_streams = itertools.count(1)
MAIN = web.AppKey("learner_app", web.Application)  # the admin app's handle on the learner app
ADMIN_URL = web.AppKey("admin_url", str)  # set on the learner app once the admin listener is up
MIN_TOKEN_CHARS = 32
CHECKPOINT_WAIT_S = 60.0


def admin_token(data_dir: Path) -> str:
    """The admin token (created 0600 on first start); a short or open one is refused, not used."""
    path = data_dir / "admin_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(24).hex())
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: the admin token is readable by others; chmod 600 it")
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{path}: the admin token is empty or shorter than {MIN_TOKEN_CHARS} characters; "
                          "delete the file and the learner writes a new one")
    return token


def _check(request: web.Request, cookie: bool = True) -> web.Application:
    """The learner app, for a request that carries the admin token (or, with ``cookie``, the dashboard's cookie)."""
    token = request.app[ADMIN_TOKEN]
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
    authorized = hmac.compare_digest(given, token.encode()) or (cookie and cookie_ok(request, token))
    if not is_loopback(request.remote or "") or not authorized:
        raise web.HTTPForbidden(text="admin endpoints need loopback and the admin token")
    return request.app[MAIN]


async def reload_robots(request: web.Request) -> web.Response:
    """Re-read robots.json; links of robots that may no longer connect close at once."""
    app = _check(request)
    if not access.reload(app):
        raise web.HTTPInternalServerError(text="robots.json does not parse; the learner keeps its previous table")
    closed = await access.sweep(app)
    return web.json_response({"robots": len(app[REGISTRY].entries), "closed": closed})


async def checkpoint(request: web.Request) -> web.Response:
    """Save every group's learner checkpoint now (what ``--resume`` continues from), between two updates."""
    app = _check(request)
    trainers = [(g.name, g.trainer) for g in app[GROUPS] if g.trainer is not None and g.trainer.checkpoint_path]
    if not trainers:
        return web.json_response({"ok": False, "message": "this learner does not train here"}, status=409)
    saved, failed = [], []
    for name, trainer in trainers:
        if await asyncio.to_thread(trainer.checkpoint_now, CHECKPOINT_WAIT_S):
            log.info("event=checkpoint_requested group=%s updates=%d", name, trainer.updates)
            saved.append((name, trainer))
            continue
        if trainer.error is not None:
            why = f"the trainer stopped: {trainer.error!r}"
        elif trainer.device is None:
            why = "training has not started yet (nothing to save)"
        else:
            why = f"not saved within {CHECKPOINT_WAIT_S:g} s"
        failed.append(f"group {name}: {why}" if len(trainers) > 1 else why)
    if failed and not saved:
        return web.json_response({"ok": False, "message": "; ".join(failed)}, status=409)
    name, first = saved[0]
    message = f"saved at update {first.updates}" + "".join(f"; group {n}: at update {t.updates}" for n, t in saved[1:])
    body: dict[str, object] = {"ok": True, "message": message + "".join(f"; {f}" for f in failed),
                               "path": str(first.checkpoint_path)}
    if len(trainers) > 1:
        body["paths"] = {n: str(t.checkpoint_path) for n, t in saved}
    return web.json_response(body)


async def status(request: web.Request) -> web.Response:
    from .app import snapshot

    return web.json_response(snapshot(_check(request)))


async def tunnel(request: web.Request) -> web.WebSocketResponse:
    """One tunnelled TCP stream: this websocket <-> the robot's link <-> a port on the robot."""
    app = _check(request, cookie=False)  # a raw TCP bridge: the CLI's header only, never a browser's cookie
    robot, port = request.query.get("robot", ""), int(request.query.get("port", "0"))
    link = app[ROBOTS].get(robot)
    if link is None:
        raise web.HTTPNotFound(text=f"robot {robot!r} is not connected")
    if not link.authenticated and not app[CONFIG].server.open:
        raise web.HTTPForbidden(text=f"robot {robot!r} did not prove a credential")
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    stream = next(_streams)
    inbox = TunnelInbox()  # bounded: a stream whose client lags is closed
    link.tunnels[stream] = inbox
    link.outbox.put(CONTROL, link.conn.tunnel_open(stream, port))
    log.info("event=tunnel_open robot_id=%s port=%d stream=%d", robot, port, stream)

    async def robot_to_client() -> None:
        while (data := await inbox.get()) is not None:
            await ws.send_bytes(data)

    async def client_to_robot() -> None:
        async for m in ws:
            if m.type is WSMsgType.BINARY:  # one message at a time: a slow robot link slows the client, not our memory
                await link.outbox.send(BULK, link.conn.tunnel_data(stream, m.data))

    down = asyncio.ensure_future(robot_to_client())
    robot_ended = False
    try:
        robot_ended = down in await until_first_done(down, client_to_robot())
    finally:
        link.tunnels.pop(stream, None)
        if not robot_ended and link.conn.state.value == "open":
            link.outbox.put(CONTROL, link.conn.tunnel_close(stream, "client closed"))
        await ws.close()
    return ws


async def admin_listener(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the admin app on ``[admin]`` host:port (loopback); its URL in ``app[ADMIN_URL]``."""
    cfg = app[CONFIG].admin
    admin = web.Application()
    admin[MAIN], admin[ADMIN_TOKEN] = app, app[ADMIN_TOKEN]
    from .app import snapshot  # the app module builds this listener: imported when it runs

    admin[SNAPSHOT] = lambda: snapshot(app)
    admin.cleanup_ctx.append(sample_history)
    admin.router.add_routes(dashboard_routes(_check))  # the page at /, its feeds under /api
    admin.router.add_get("/status", status)
    admin.router.add_post("/admin/reload", reload_robots)
    admin.router.add_post("/admin/checkpoint", checkpoint)
    admin.router.add_get("/admin/tunnel", tunnel)
    admin.router.add_routes(command_routes(_check))  # POST /admin/robots/{robot_id}/command
    runner = web.AppRunner(admin, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.host, cfg.port).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"admin.host/admin.port: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
    host, port = runner.addresses[0][:2]
    app[ADMIN_URL] = f"http://{url_host(host)}:{port}"
    log.info("event=admin_listening url=%s", app[ADMIN_URL])
    yield
    await runner.cleanup()
