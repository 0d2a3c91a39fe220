"""The fleet dashboard, served by the admin listener: one page, live over server-sent events.

It lives where the admin API lives (loopback, admin token), never on the
robot-facing port; from another machine it is reached through an ssh tunnel.
A browser cannot send the token as a header on a page load, so the page is
opened once with ``?token=`` (``cloud-learner dashboard`` prints that URL),
which sets a same-site, script-invisible cookie and redirects the token out of
the address bar, as Jupyter does. Every button then calls the same admin
endpoints the CLI uses; a cookie-authenticated POST must also carry the
``X-Fleetrl-Dashboard`` header, which no cross-site form can set (CSRF).

The learner keeps a short history of its own figures (sampled every
``SAMPLE_S``) so a freshly opened page draws curves at once.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections import deque
from importlib import resources
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from .keys import ADMIN_TOKEN
from .status import LearnerStatus

log = logging.getLogger("fleetrl.dashboard")

COOKIE = "fleetrl_admin"
CSRF_HEADER = "X-Fleetrl-Dashboard"
SAMPLE_S = 2.0  # history resolution
GROUP_FIGURES = ("success_rate", "mean_return", "updates_per_s", "buffer_rows", "policy_version", "episodes")
HISTORY_POINTS = 1800  # an hour at SAMPLE_S
EVENT_S = 1.0  # how often an open page hears the status

Snapshot = Callable[[], LearnerStatus]
HISTORY: web.AppKey[deque[dict[str, Any]]] = web.AppKey("dashboard_history")
SNAPSHOT: web.AppKey[Snapshot] = web.AppKey("dashboard_snapshot")


def cookie_ok(request: web.Request, token: str) -> bool:
    """Whether the request carries the dashboard cookie (and, unless it only reads, the CSRF header)."""
    given = request.cookies.get(COOKIE, "")
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        return False
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return False  # another page on this host (same site for cookies, other origin) may not use ours
    return request.method in ("GET", "HEAD") or request.headers.get(CSRF_HEADER) == "1"


def to_json(value: Any) -> str:
    """JSON a browser's ``JSON.parse`` accepts: a diverged loss (NaN, inf) becomes null, not a bare NaN
    that would stop the page from updating."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False)


def point(s: LearnerStatus, last: dict[str, Any] | None) -> dict[str, Any]:
    """One history sample: the figures the charts draw (rates from the previous sample)."""
    rows = s["ingest"]["rows"]
    dt = s["time"] - last["t"] if last else 0.0
    return {
        "t": round(s["time"], 3), "success_rate": s["success_rate"], "mean_return": s.get("mean_return"),
        "buffer_rows": s["buffer_rows"], "updates": s["updates"], "updates_per_s": s["updates_per_s"],
        "ingest_rows": rows, "ingest_rows_per_s": round((rows - last["ingest_rows"]) / dt, 1) if last and dt > 0 else 0.0,
        "policy_version": s["policy_version"], "robots": len(s["robots"]), "episodes": s["episodes"],
        "losses": {k: round(v, 6) for k, v in s["losses"].items()},
        # a mixed fleet's page draws one curve per embodiment group (one group: the figures above are its own)
        "groups": {name: {k: dict(g)[k] for k in GROUP_FIGURES} for name, g in s.get("groups", {}).items()}
        if len(s.get("groups", {})) > 1 else {},
    }


async def sample_history(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx of the admin app: sample the learner's figures into ``app[HISTORY]``."""
    history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
    app[HISTORY] = history

    async def run() -> None:
        while True:
            try:
                history.append(point(app[SNAPSHOT](), history[-1] if history else None))
            except Exception as e:  # a bad sample must not end the history
                log.warning("event=dashboard_sample_failed error=%r", e)
            await asyncio.sleep(SAMPLE_S)

    task = asyncio.create_task(run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def dashboard_routes(check: Callable[[web.Request], web.Application]) -> list[web.RouteDef]:
    """The page and its two feeds; ``check`` is the admin listener's auth (header or cookie)."""

    async def page(request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is not None:  # the one-time link: trade the token for the cookie, drop it from the URL
            expected = request.app[ADMIN_TOKEN]
            if not hmac.compare_digest(token.encode(), expected.encode()):
                raise web.HTTPForbidden(text="wrong admin token")
            resp = web.HTTPFound("/")
            resp.set_cookie(COOKIE, expected, httponly=True, samesite="Strict", path="/")
            raise resp
        try:
            check(request)
        except web.HTTPForbidden:
            raise web.HTTPForbidden(text="open the dashboard with the link `cloud-learner dashboard --config "
                                         "run.toml` prints (it holds the admin token)") from None
        html = resources.files("cloud").joinpath("static/dashboard.html").read_text(encoding="utf-8")
        return web.Response(text=html, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                       "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        })

    async def history(request: web.Request) -> web.Response:
        check(request)
        hist = request.app[HISTORY]
        return web.json_response(text=to_json(list(hist)))

    async def events(request: web.Request) -> web.StreamResponse:
        """Server-sent events: the whole status every EVENT_S, and each new history sample."""
        check(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        hist = request.app[HISTORY]
        sent = hist[-1]["t"] if hist else 0.0
        try:
            while True:
                new = [p for p in list(hist)[-8:] if p["t"] > sent]
                sent = new[-1]["t"] if new else sent
                body = to_json({"status": request.app[SNAPSHOT](), "points": new, "server_time": time.time()})
                await resp.write(f"data: {body}\n\n".encode())
                await asyncio.sleep(EVENT_S)
        except ConnectionResetError:
            pass  # the page closed
        return resp

    return [web.get("/", page), web.get("/api/history", history), web.get("/api/events", events)]


def dashboard_url(cfg: Any) -> str:
    """The one-time link to a running learner's dashboard (``cloud-learner dashboard``): it holds the admin token."""
    from .admin_client import running_endpoint

    base, token, _ = running_endpoint(cfg)
    return dashboard_link(base, token)


def dashboard_link(admin_base: str, token: str) -> str:
    """The page's one-time link from endpoint.json's ``admin`` URL (``http://host:port/admin``) and the token."""
    return f"{admin_base.rsplit('/admin', 1)[0]}/?token={token}"
