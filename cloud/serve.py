"""Run the learner application until SIGTERM/SIGINT (under systemd: a ``Type=notify`` service, ``cloud.service``)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import ssl
import sys


from shared.config import LearnerConfig
from shared.errors import FleetError
from shared.fsutil import atomic_write
from shared.sdnotify import Notifier, watchdog_period

from .admin import ADMIN_URL
from .admission import serve_robot_port
from .app import make_app, snapshot
from .keys import GROUPS, POLICY_SERVER
from .metrics import start_metrics
from .service import LearnerWatchdog, load_trainer_imports

log = logging.getLogger("fleetrl.serve")


async def serve(cfg: LearnerConfig, resume: bool = False) -> int:
    notifier = Notifier()  # a no-op unless systemd set NOTIFY_SOCKET
    if notifier.enabled and watchdog_period() is not None:  # before the trainer thread starts (cloud.service)
        notifier.status("starting: loading torch")
        load_trainer_imports()
    notifier.status("starting: recovering the replay buffer")
    app = make_app(cfg, resume)
    runner, url = await serve_robot_port(app, cfg.server, shutdown_timeout=5.0)  # TLS, socket caps, header deadline
    metrics = await start_metrics(lambda: snapshot(app), cfg.metrics, app[POLICY_SERVER])  # localhost only; never fatal
    admin = app[ADMIN_URL]  # its own loopback listener: the robot port serves only /ws
    endpoint = cfg.data_dir / "endpoint.json"
    atomic_write(endpoint, json.dumps({
        "url": url, "status": f"{admin}/status", "admin": f"{admin}/admin", "pid": os.getpid(),
        "metrics": metrics[1] if metrics else None,
    }).encode())
    # Start-up built ~200k objects (torch, the app, the buffer's index). A full collection, set off later by
    # the objects requests make, would walk them all holding the GIL (~110 ms measured on a 2-core machine):
    # every robot's chunk answers and acks would wait behind it at once. Keep them out of collections.
    gc.collect()
    gc.freeze()
    log.info("event=learner_ready url=%s data_dir=%s", url, cfg.data_dir)
    print(f"READY {url}", flush=True)  # the demo (and scripts) wait for this line
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = None
    if notifier.enabled:
        notifier.ready(f"serving robots at {url}")
        service = LearnerWatchdog(notifier, watchdog_period(), lambda: snapshot(app), app[GROUPS].stalest_trainer)
        watchdog = asyncio.create_task(service.run())
    await stop.wait()
    log.info("event=learner_stopping")
    if watchdog is not None:
        watchdog.cancel()
        notifier.stopping("stopping: closing robot links, checkpointing the learner")
    if metrics is not None:
        await metrics[0].cleanup()
    await runner.cleanup()
    endpoint.unlink(missing_ok=True)  # a stopped learner: the CLI can say so truthfully
    notifier.close()
    return 0


def main(cfg: LearnerConfig, resume: bool = False) -> int:
    try:
        return asyncio.run(serve(cfg, resume))
    except ssl.SSLError as e:
        print(f"cloud-learner: server.tls_cert/tls_key: cannot load: {e}", file=sys.stderr)
        return 2
    except FleetError as e:
        print(f"cloud-learner: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cloud-learner: cannot listen on {cfg.server.host}:{cfg.server.port}: {e.strerror}", file=sys.stderr)
        return 2
