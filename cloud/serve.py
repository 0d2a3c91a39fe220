"""Run the learner application until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from aiohttp import web

from shared.config import LearnerConfig
from shared.errors import FleetError
from shared.fsutil import atomic_write

from .app import make_app

log = logging.getLogger("fleetrl.serve")


async def serve(cfg: LearnerConfig, resume: bool = False) -> int:
    app = make_app(cfg, resume)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"ws://{host}:{port}/ws"
    atomic_write(cfg.data_dir / "endpoint.json", json.dumps({"url": url, "status": f"http://{host}:{port}/status"}).encode())
    log.info("event=learner_ready url=%s data_dir=%s", url, cfg.data_dir)
    print(f"READY {url}", flush=True)  # the demo (and scripts) wait for this line
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("event=learner_stopping")
    await runner.cleanup()
    return 0


def main(cfg: LearnerConfig, resume: bool = False) -> int:
    try:
        return asyncio.run(serve(cfg, resume))
    except FleetError as e:
        print(f"cloud-learner: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cloud-learner: cannot listen on {cfg.server.host}:{cfg.server.port}: {e.strerror}", file=sys.stderr)
        return 2
