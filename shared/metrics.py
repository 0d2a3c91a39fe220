"""What both daemons' Prometheus endpoints share: a rate meter and the listener.

Like ``fsutil`` and ``logs``, this is daemon plumbing rather than protocol: the
robot's ``edge_agent.metrics`` and the learner's ``cloud.metrics`` differ only
in what they collect. Metrics are never fatal: a taken port is a warning and
no endpoint, not a daemon that will not start.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from aiohttp import web

log = logging.getLogger("fleetrl.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RateMeter:
    """Events per second between two readings of a counter.

    Readings closer than ``min_interval_s`` keep the last rate (and the older
    reading as the base), so two scrapes a few milliseconds apart do not
    report a rate made of noise.
    """

    def __init__(self, min_interval_s: float = 0.0) -> None:
        self.min_interval_s = min_interval_s
        self._last: tuple[float, int] | None = None
        self.rate = 0.0

    def update(self, count: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._last is None:
            self._last = (now, count)
        elif now - self._last[0] > self.min_interval_s:
            self.rate = (count - self._last[1]) / (now - self._last[0])
            self._last = (now, count)
        return self.rate


async def start_metrics_listener(render: Callable[[], bytes], host: str, port: int,
                                 routes: Sequence[web.RouteDef] = ()) -> tuple[web.AppRunner, str] | None:
    """Serve ``GET /metrics`` with ``render()``'s text (and ``routes``: the agent's label API); None (and a
    warning) if the address is taken."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_routes(routes)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        log.warning("event=metrics_unavailable host=%s port=%d error=%r", host, port, e.strerror or str(e))
        await runner.cleanup()
        return None
    h, p = runner.addresses[0][:2]
    return runner, f"http://{h}:{p}/metrics"
