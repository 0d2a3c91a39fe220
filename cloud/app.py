"""The learner as an aiohttp application: handlers thin, state in app keys,
startup and cleanup of each component in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from functools import partial
from typing import AsyncIterator

from aiohttp import web

from shared.config import LearnerConfig
from shared.errors import ConfigError
from shared.protocol import Limits

from .admission import SourceCounter
from .buffer import ReplayBuffer
from .gateway import robot_ws
from .ingest import Ingest
from .quotas import Quotas
from .access import follow_robots
from .admin import admin_listener, admin_token
from .keys import HANDSHAKES, ADMIN_TOKEN, BUFFER, CONFIG, INGEST, LIMITS, PUBLISHER, REGISTRY, REJECTIONS, RESUME, ROBOTS, TRAINER
from .robots import RobotRegistry
from .learner.rewards import table_relabel
from .learner.algorithms import needs_demos
from .learner.tblog import RunStats
from .learner.trainer import Trainer
from .publisher import WeightPublisher
from .status import LearnerStatus

log = logging.getLogger("fleetrl.app")


CHECKPOINT = "checkpoints/learner.safetensors"
TENSORBOARD = "tb"  # learner.tensorboard writes here: tensorboard --logdir <data_dir>/tb


def make_app(cfg: LearnerConfig, resume: bool = False, with_trainer: bool = True) -> web.Application:
    """The learner app; ``resume`` continues training from the data_dir's checkpoint.

    ``with_trainer=False``: gateway, buffer and weight publisher only (a cluster
    shard: the cluster learner trains and its weights are relayed here)."""
    ckpt = cfg.data_dir / CHECKPOINT
    if ckpt.exists() and not resume:
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
    )
    app[ROBOTS] = {}
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    app[REGISTRY] = RobotRegistry(cfg.data_dir / "robots.json")
    app[REJECTIONS] = Counter()
    app[HANDSHAKES] = SourceCounter(cfg.server.max_pending_handshakes, cfg.server.max_pending_per_source)
    app[ADMIN_TOKEN] = admin_token(cfg.data_dir)
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(partial(_learning, with_trainer=with_trainer))
    app.cleanup_ctx.append(follow_robots)
    app.cleanup_ctx.append(admin_listener)  # /status and /admin/*: loopback, token; never on the robot port
    app.router.add_get("/ws", robot_ws)  # the only route robots (and the internet) can reach
    if cfg.server.open:
        log.warning("event=auth_open server.auth=open: robots without a credential may link, send data and get "
                    "weights; the learner listens on %s (loopback) only. Use auth = \"required\" for real robots.",
                    cfg.server.host)
    return app


async def _storage(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    lc = cfg.learner
    relabel = await asyncio.to_thread(table_relabel, lc)  # reward = "classifier": rows scored as they are indexed
    buffer = await asyncio.to_thread(
        partial(ReplayBuffer, cfg.data_dir / "buffer", lc.memory_capacity, lc.observation_fields,
                image_fields=lc.image_fields, image_memory_bytes=int(lc.image_memory_mb * 2**20),
                history_fraction=lc.history_fraction, demo_capacity=lc.demo_capacity if needs_demos(lc) else 0,
                demo_paths=lc.demo_paths, relabel=relabel)
    )
    app[BUFFER] = buffer
    app[INGEST] = Ingest(buffer, app[LIMITS], quotas=Quotas.from_config(cfg.limits))
    writer = asyncio.create_task(app[INGEST].run_writer())
    log.info("event=buffer_ready run_id=%s rows=%d report=%s", buffer.run_id, buffer.rows, buffer.recovery_report)
    yield
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)


async def _learning(app: web.Application, with_trainer: bool = True) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    loop = asyncio.get_running_loop()
    publisher = WeightPublisher(cfg.data_dir / "policy")
    app[PUBLISHER] = publisher

    def publish(blob) -> None:  # called on the trainer thread
        asyncio.run_coroutine_threadsafe(publisher.publish(blob), loop).add_done_callback(_publish_done)

    trainer = None
    if with_trainer:
        (cfg.data_dir / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
        buffer, ingest = app[BUFFER], app[INGEST]

        def run_stats() -> RunStats:  # on the trainer thread: plain counters only
            return RunStats(buffer_rows=buffer.rows, ingested_rows=ingest.rows, episodes=buffer.episodes_total,
                            success_rate=buffer.success_rate(), mean_return=buffer.mean_return())

        trainer = Trainer(
            buffer, cfg.learner, publish, start_version=publisher.version,
            checkpoint_path=cfg.data_dir / CHECKPOINT, resume=app[RESUME], published=publisher.latest,
            tensorboard_dir=cfg.data_dir / TENSORBOARD, run_stats=run_stats,
        )
        app[TRAINER] = trainer
        app[INGEST].on_durable = trainer.notify_data
        trainer.start()
    yield
    for robot in list(app[ROBOTS].values()):
        await robot.ws.close(code=1001, message=b"learner shutting down")
    if trainer is not None:
        trainer.stop()
        await asyncio.to_thread(trainer.join, 10.0)
        if trainer.is_alive():  # hung (the watchdog said so): its last checkpoint stands, the buffer is durable
            log.error("event=trainer_not_stopped waited_s=10 action=exiting_without_a_final_checkpoint")


def _publish_done(fut) -> None:
    """Failed writes are handled in the publisher; anything else is a bug: say so, once per failure."""
    if not fut.cancelled() and fut.exception() is not None:
        log.error("event=publish_crashed error=%r", fut.exception())


def snapshot(app: web.Application) -> LearnerStatus:
    buffer, trainer, ingest = app[BUFFER], app.get(TRAINER), app[INGEST]
    return {
        "time": time.time(),
        "run_id": buffer.run_id,
        "data_dir": str(app[CONFIG].data_dir),
        "buffer_rows": buffer.rows,
        "rows_by_robot": dict(buffer.rows_by_robot),
        "hwm": buffer.marks(),
        "episodes": buffer.episodes_total,
        "success_rate": buffer.success_rate(),
        "mean_return": buffer.mean_return(),
        "policy_version": app[PUBLISHER].version,
        "updates": trainer.updates if trainer else 0,
        "resumed_from_update": trainer.resumed_from if trainer else None,
        "resumed_from_policy": trainer.resumed_from_policy if trainer else None,
        "publish_failures": app[PUBLISHER].failures,
        "last_publish_error": app[PUBLISHER].last_error or None,
        "storage": {"holding": ingest.holding, "write_failures": ingest.write_failures,
                    "last_write_error": ingest.last_write_error or None},
        "updates_per_s": round(trainer.updates_per_s, 1) if trainer else 0.0,
        "learner_device": str(trainer.device) if trainer and trainer.device else None,
        "losses": trainer.last_losses if trainer else {},
        "trainer_error": repr(trainer.error) if trainer and trainer.error else None,
        "ingest": {"chunks": ingest.chunks, "rows": ingest.rows, "duplicates": ingest.duplicates},
        "robots": {
            rid: {"since": r.since, "chunks": r.chunks, "authenticated": r.authenticated,
                  "commands": r.conn.takes_commands, "reported": r.status}
            for rid, r in app[ROBOTS].items()
        },
        "rejections": dict(app[REJECTIONS].items()),
    }
