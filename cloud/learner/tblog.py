"""TensorBoard scalars from the trainer thread (``learner.tensorboard = true``).

Every ``learner.tensorboard_every`` updates the trainer hands its losses and
counters here; the step of each point is the update count, so a resumed run
continues its curves (each start adds an event file to the same folder,
``<data_dir>/tb``: ``tensorboard --logdir <data_dir>/tb``). ``SummaryWriter``
queues the points to its own thread, so a point costs the trainer a few
microseconds per scalar. ``torch.utils.tensorboard`` is imported only when
enabled: without the ``tensorboard`` package the learner refuses to start with
one line saying what to install.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from shared.errors import ConfigError

log = logging.getLogger("fleetrl.tensorboard")

INSTALL = "pip install 'fleetrl[tensorboard]'"


@dataclass(frozen=True)
class RunStats:
    """What the learner around the trainer knows (read on the trainer thread, so only plain counters)."""

    buffer_rows: int
    ingested_rows: int  # a counter (rows made durable): the log shows its rate
    episodes: int | None = None  # None where the buffer does not count episodes (the cluster's shards)
    success_rate: float | None = None  # over the recent episodes; None before any
    mean_return: float | None = None  # mean summed reward of the same episodes


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a ConfigError naming what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing (or too old)
        raise ConfigError(f"learner.tensorboard = true needs the tensorboard package: {INSTALL}") from None
    return SummaryWriter


class TrainingLog:
    """One writer under ``logdir``; :meth:`log` writes one point (called every ``every`` updates)."""

    def __init__(self, logdir: Path, every: int, stats: Callable[[], RunStats] | None = None):
        writer_class = summary_writer_class()
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir, self.every, self.stats = logdir, every, stats
        self.writer = writer_class(log_dir=str(logdir), flush_secs=10)
        self._base: tuple[float, int, int] | None = None  # (monotonic time, updates, ingested rows) at the last point
        self.points = 0
        self.failed = False

    def due(self, updates: int) -> bool:
        return not self.failed and updates % self.every == 0

    def begin(self, updates: int) -> None:
        """Training starts (or resumes) at ``updates``: the first point's rates count from here."""
        self._base = (time.monotonic(), updates, self._ingested())

    def _ingested(self) -> int:
        return self.stats().ingested_rows if self.stats is not None else 0

    def log(self, updates: int, losses: Mapping[str, float], policy_version: int) -> None:
        """One point at step ``updates``. A failing writer (a full disk) is logged once and turned off:
        TensorBoard never stops training."""
        try:
            self._log(updates, losses, policy_version)
        except Exception as e:
            self.failed = True
            log.error("event=tensorboard_failed logdir=%s error=%r action=tensorboard_off", self.logdir, e)

    def _log(self, updates: int, losses: Mapping[str, float], policy_version: int) -> None:
        now = time.monotonic()
        s = self.stats() if self.stats is not None else None
        scalars: dict[str, float | None] = {f"loss/{k}": v for k, v in losses.items()}
        scalars["learner/policy_version"] = policy_version
        if self._base is not None and now > self._base[0]:
            dt = now - self._base[0]
            scalars["learner/updates_per_s"] = (updates - self._base[1]) / dt
            if s is not None:
                scalars["ingest/rows_per_s"] = (s.ingested_rows - self._base[2]) / dt
        if s is not None:
            scalars["buffer/rows"] = s.buffer_rows
            scalars["buffer/episodes"] = s.episodes
            scalars["episodes/success_rate"] = s.success_rate
            scalars["episodes/mean_return"] = s.mean_return
        for tag, value in scalars.items():
            if value is not None:  # None: not known yet (no episode has ended)
                self.writer.add_scalar(tag, value, updates)
        self._base = (now, updates, s.ingested_rows if s is not None else 0)
        self.points += 1

    def close(self) -> None:
        try:
            self.writer.close()  # flushes what is queued
        except Exception as e:
            log.error("event=tensorboard_close_failed logdir=%s error=%r", self.logdir, e)
