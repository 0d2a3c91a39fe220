"""The learner as an aiohttp application: handlers thin, state in app keys,
startup and cleanup of each component in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from functools import partial
from typing import AsyncIterator

import torch
from aiohttp import web

from shared.config import LearnerConfig
from shared.devices import resolve_device
from shared.errors import ConfigError
from shared.tasks import cancel_and_reap
from shared.protocol import Limits

from .admission import SourceCounter
from .gateway import robot_ws
from .groups import GroupRegistry, group
from .groups.registry import stored_checkpoints
from .access import follow_robots
from .admin import admin_listener, admin_token
from .keys import (ADMIN_TOKEN, BUFFER, CONFIG, GROUPS, HANDSHAKES, INGEST, LIMITS, POLICY_SERVER, PUBLISHER, REGISTRY,
                   REJECTIONS, RESUME, ROBOTS, TRAINER)
from .policy_server import PolicyServer
from .robots import RobotRegistry
from .status import LearnerStatus, group_status

log = logging.getLogger("fleetrl.app")


CHECKPOINT = group.CHECKPOINT  # the first group's, under <data_dir>; later groups' under <data_dir>/groups/<name>/
TENSORBOARD = group.TENSORBOARD  # learner.tensorboard writes here: tensorboard --logdir <data_dir>/tb


def make_app(cfg: LearnerConfig, resume: bool = False, with_trainer: bool = True) -> web.Application:
    """The learner app; ``resume`` continues training from the data_dir's checkpoint.

    ``with_trainer=False``: gateway, buffer and weight publisher only (a cluster
    shard: the cluster learner trains and its weights are relayed here)."""
    if stored_checkpoints(cfg.data_dir) and not resume:
        raise ConfigError(
            f"{cfg.data_dir} holds a run with a learner checkpoint: pass --resume to continue it, or use a new data_dir"
        )
    app = web.Application()
    app[CONFIG] = cfg
    app[RESUME] = resume
    lc = cfg.limits
    app[LIMITS] = Limits(
        max_frame_bytes=lc.max_frame_bytes, max_decompressed_bytes=lc.max_decompressed_bytes,
        max_chunk_rows=lc.max_chunk_rows, max_inflight_chunks=lc.max_inflight_chunks,
        max_act_camera_bytes=lc.max_act_camera_bytes,
    )
    app[ROBOTS] = {}
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    app[REGISTRY] = RobotRegistry(cfg.data_dir / "robots.json")
    app[REJECTIONS] = Counter()
    app[HANDSHAKES] = SourceCounter(cfg.server.max_pending_handshakes, cfg.server.max_pending_per_source)
    app[ADMIN_TOKEN] = admin_token(cfg.data_dir)
    app[POLICY_SERVER] = PolicyServer(cfg.inference, torch.device("cpu"), cfg.server.open)  # device set at start
    app.cleanup_ctx.append(partial(_groups, with_trainer=with_trainer))
    app.cleanup_ctx.append(_policy_server)
    app.cleanup_ctx.append(follow_robots)
    app.cleanup_ctx.append(admin_listener)  # /status and /admin/*: loopback, token; never on the robot port
    app.router.add_get("/ws", robot_ws)  # the only route robots (and the internet) can reach
    if cfg.server.open:
        log.warning("event=auth_open server.auth=open: robots without a credential may link, send data and get "
                    "weights; the learner listens on %s (loopback) only. Use auth = \"required\" for real robots.",
                    cfg.server.host)
    return app


async def _groups(app: web.Application, with_trainer: bool = True) -> AsyncIterator[None]:
    """cleanup_ctx: every group of the run (buffer, ingest, trainer, publisher), opened from disk and started;
    the first group's parts also under the single-group keys (``BUFFER``, ...) for code that predates groups."""
    cfg = app[CONFIG]
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    groups = await asyncio.to_thread(GroupRegistry.open, cfg, app[LIMITS])
    app[GROUPS] = groups
    first = groups.first
    app[BUFFER], app[INGEST], app[PUBLISHER] = first.buffer, first.ingest, first.publisher
    groups.start(asyncio.get_running_loop(), with_trainer, app[RESUME])
    if first.trainer is not None:
        app[TRAINER] = first.trainer
    yield
    for robot in list(app[ROBOTS].values()):
        await robot.ws.close(code=1001, message=b"learner shutting down")
    await groups.stop()


async def _policy_server(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the policy server's batcher, on the learner's device (robots with policy.where = "cloud")."""
    server = app[POLICY_SERVER]
    if server.cfg.enabled:
        server.device = await asyncio.to_thread(resolve_device, app[CONFIG].learner.device, "learner.device")
        log.info("event=inference_serving device=%s max_batch=%d batch_window_ms=%g latency_budget_ms=%g",
                 server.device, server.cfg.max_batch, server.cfg.batch_window_ms, server.cfg.latency_budget_ms)
    task = asyncio.create_task(server.run())
    yield
    await cancel_and_reap((task,))
    server.close()


def snapshot(app: web.Application) -> LearnerStatus:
    """The /status record. With groups, the learner's keys (run id, policy, updates, losses, success) are
    the first group's and the counts (rows, episodes, ingest, robots) the run's totals; ``groups`` has each."""
    groups = app[GROUPS]
    first = groups.first
    buffer, trainer, publisher = first.buffer, first.trainer, first.publisher
    robots = app[ROBOTS]
    per_group = {g.name: group_status(g, [rid for rid, r in robots.items() if r.group is g]) for g in groups}
    all_ = list(groups)
    return {
        "time": time.time(),
        "run_id": buffer.run_id,
        "data_dir": str(app[CONFIG].data_dir),
        "buffer_rows": sum(g.buffer.rows for g in all_),
        "rows_by_robot": {rid: n for g in all_ for rid, n in g.buffer.rows_by_robot.items()},
        "hwm": {rid: n for g in all_ for rid, n in g.buffer.marks().items()},
        "episodes": sum(g.buffer.episodes_total for g in all_),
        "success_rate": buffer.success_rate(),
        "mean_return": buffer.mean_return(),
        "policy_version": publisher.version,
        "updates": trainer.updates if trainer else 0,
        "resumed_from_update": trainer.resumed_from if trainer else None,
        "resumed_from_policy": trainer.resumed_from_policy if trainer else None,
        "publish_failures": sum(g.publisher.failures for g in all_),
        "last_publish_error": next((g.publisher.last_error for g in all_ if g.publisher.last_error), None),
        "storage": {"holding": any(g.ingest.holding for g in all_),
                    "write_failures": sum(g.ingest.write_failures for g in all_),
                    "last_write_error": next((g.ingest.last_write_error for g in all_ if g.ingest.last_write_error), None)},
        "updates_per_s": round(trainer.updates_per_s, 1) if trainer else 0.0,
        "learner_device": str(trainer.device) if trainer and trainer.device else None,
        "losses": trainer.last_losses if trainer else {},
        "trainer_error": next((f"{g.name}: {g.trainer.error!r}" if len(all_) > 1 else repr(g.trainer.error)
                               for g in all_ if g.trainer is not None and g.trainer.error is not None), None),
        "ingest": {"chunks": sum(g.ingest.chunks for g in all_), "rows": sum(g.ingest.rows for g in all_),
                   "duplicates": sum(g.ingest.duplicates for g in all_)},
        "robots": {
            rid: {"since": r.since, "chunks": r.chunks, "authenticated": r.authenticated,
                  "commands": r.conn.takes_commands, "cloud_policy": r.conn.takes_inference, "reported": r.status,
                  "group": r.group.name if r.group is not None else None}
            for rid, r in robots.items()
        },
        "rejections": dict(app[REJECTIONS].items()),
        "groups": per_group,
        "inference": app[POLICY_SERVER].status(),
    }
