"""One embodiment group: the robots of one episode spec and everything that learns from them.

A policy has one observation and action size, so each group has its own buffer,
ingest (dedupe and group commit), trainer (policy and checkpoint) and weight
publisher; a robot's link uses its group's, and nothing else. The first group
lives where a run without groups keeps its data (``<data_dir>/buffer``,
``policy``, ``checkpoints``), so existing runs open unchanged; later groups under
``<data_dir>/groups/<name>/``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from shared.config import LearnerAlgoConfig, LimitsConfig
from shared.protocol import Limits

from ..buffer import ReplayBuffer
from ..ingest import Ingest
from ..learner.algorithms import needs_demos
from ..learner.rewards import table_relabel
from ..learner.tblog import RunStats
from ..learner.trainer import Trainer
from ..publisher import WeightPublisher
from ..quotas import Quotas

log = logging.getLogger("fleetrl.groups")

CHECKPOINT = "checkpoints/learner.safetensors"
TENSORBOARD = "tb"  # learner.tensorboard writes here: tensorboard --logdir <group root>/tb
GROUPS_DIR = "groups"  # <data_dir>/groups/<name>/: every group but the first
META = "group"  # the buffer manifest's tag: {"name", "driver"} of the group


def group_root(data_dir: Path, name: str, first: bool) -> Path:
    """Where a group keeps its buffer, policy and checkpoints (``name`` is a checked id)."""
    return data_dir if first else data_dir / GROUPS_DIR / name


@dataclass
class Group:
    """A group's parts; ``name`` is fixed, except the first group's until its first robot names it."""

    name: str
    root: Path
    cfg: LearnerAlgoConfig
    buffer: ReplayBuffer
    ingest: Ingest
    publisher: WeightPublisher
    first: bool = False
    patterns: tuple[str, ...] = ()  # robot id patterns of a pinned group: it takes those robots only
    pinned: bool = False  # named in [[groups.named]]: its name never changes
    driver: str = ""
    trainer: Trainer | None = None
    _writer: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def checkpoint_path(self) -> Path:
        return self.root / CHECKPOINT

    def takes(self, robot_id: str) -> bool:
        """Whether a pinned group's patterns name this robot (a group without patterns names none)."""
        return any(fnmatch.fnmatchcase(robot_id, p) for p in self.patterns)

    def start(self, loop: asyncio.AbstractEventLoop, with_trainer: bool, resume: bool) -> None:
        """The ingest writer, and (``with_trainer``) the trainer thread publishing through this group's publisher.
        Call in the event loop."""
        self._writer = asyncio.create_task(self.ingest.run_writer())
        if not with_trainer:
            return
        publisher, buffer, ingest = self.publisher, self.buffer, self.ingest

        def publish(blob: Any) -> None:  # called on the trainer thread
            asyncio.run_coroutine_threadsafe(publisher.publish(blob), loop).add_done_callback(_publish_done)

        def run_stats() -> RunStats:  # on the trainer thread: plain counters only
            return RunStats(buffer_rows=buffer.rows, ingested_rows=ingest.rows, episodes=buffer.episodes_total,
                            success_rate=buffer.success_rate(), mean_return=buffer.mean_return())

        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(
            buffer, self.cfg, publish, start_version=publisher.version,
            checkpoint_path=self.checkpoint_path, resume=resume, published=publisher.latest,
            tensorboard_dir=self.root / TENSORBOARD, run_stats=run_stats,
        )
        if not self.first:  # the first group's thread keeps the name it had before groups
            trainer.name = f"trainer-{self.name}"
        self.trainer = trainer
        self.ingest.on_durable = trainer.notify_data
        trainer.start()

    async def stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    async def stop_trainer(self) -> None:
        trainer = self.trainer
        if trainer is None:
            return
        trainer.stop()
        await asyncio.to_thread(trainer.join, 10.0)
        if trainer.is_alive():  # hung (the watchdog said so): its last checkpoint stands, the buffer is durable
            log.error("event=trainer_not_stopped group=%s waited_s=10 action=exiting_without_a_final_checkpoint",
                      self.name)


def _publish_done(fut: Any) -> None:
    """Failed writes are handled in the publisher; anything else is a bug: say so, once per failure."""
    if not fut.cancelled() and fut.exception() is not None:
        log.error("event=publish_crashed error=%r", fut.exception())


def open_group(name: str, root: Path, cfg: LearnerAlgoConfig, limits_cfg: LimitsConfig, limits: Limits,
               first: bool = False, patterns: Sequence[str] = (), pinned: bool = False) -> Group:
    """Open (or create) a group's buffer and publisher from its folder. Blocking: run it in a thread."""
    root.mkdir(parents=True, exist_ok=True)
    buffer = ReplayBuffer(
        root / "buffer", cfg.memory_capacity, cfg.observation_fields, image_fields=cfg.image_fields,
        image_memory_bytes=int(cfg.image_memory_mb * 2**20), history_fraction=cfg.history_fraction,
        demo_capacity=cfg.demo_capacity if needs_demos(cfg) else 0, demo_paths=cfg.demo_paths,
        relabel=table_relabel(cfg),  # reward = "classifier": rows scored as they are indexed
        chunk_horizon=cfg.flow_horizon if cfg.policy_kind == "flow" else 0,  # the flow policy trains on chunks
    )
    meta = buffer.extra(META) or {}
    publisher = WeightPublisher(root / "policy", name)
    ingest = Ingest(buffer, limits, quotas=Quotas.from_config(limits_cfg))
    group = Group(name, root, cfg, buffer, ingest, publisher, first=first, patterns=tuple(patterns), pinned=pinned,
                  driver=str(meta.get("driver", "")) if isinstance(meta, dict) else "")
    log.info("event=group_ready group=%s root=%s run_id=%s rows=%d spec=%s report=%s", name, root, buffer.run_id,
             buffer.rows, "set" if buffer.spec is not None else "none", buffer.recovery_report)
    return group


async def open_group_async(*args: Any, **kwargs: Any) -> Group:
    return await asyncio.to_thread(partial(open_group, *args, **kwargs))
