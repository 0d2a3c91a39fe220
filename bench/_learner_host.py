"""The real learner app (cloud.app.make_app) plus one bench-only route,
``POST /bench/publish?path=...``, that hands a weights blob to the app's own
WeightPublisher exactly as the trainer thread does. It answers with the unix
time at which publish() was called, so a benchmark can time the push from the
moment a trainer would have published.

    python -m bench._learner_host --config run.toml [--resume]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

from aiohttp import web

from cloud.admin import ADMIN_URL
from cloud.app import make_app
from cloud.keys import PUBLISHER
from shared import config as cfgmod
from shared.logs import setup
from shared.weights import WeightsBlob


async def publish(request: web.Request) -> web.Response:
    path = Path(request.query["path"])
    meta = json.loads(path.with_suffix(".json").read_text())
    data = await asyncio.to_thread(path.read_bytes)  # read before the clock starts
    blob = WeightsBlob(int(meta["version"]), meta["sha256"], data)
    t0 = time.time()
    await request.app[PUBLISHER].publish(blob)
    return web.json_response({"t_publish": t0, "t_notified": time.time(), "bytes": len(data)})


async def main(config: Path, resume: bool) -> None:
    cfg = cfgmod.load(cfgmod.LearnerConfig, config)
    app = make_app(cfg, resume)
    app.router.add_post("/bench/publish", publish)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    admin = app[ADMIN_URL]  # /status lives on the loopback admin listener, as with `cloud-learner serve`
    (cfg.data_dir / "endpoint.json").write_text(json.dumps({
        "url": f"ws://{host}:{port}/ws", "status": f"{admin}/status", "admin": f"{admin}/admin", "pid": os.getpid(),
    }))
    print(f"READY ws://{host}:{port}/ws", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    setup("INFO")
    asyncio.run(main(a.config, a.resume))
