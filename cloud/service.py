"""systemd integration for the learner: READY, STATUS, the watchdog, STOPPING.

``cloud-learner serve`` under a ``Type=notify`` unit (systemd/cloud-learner.service)
says READY=1 once it serves robots, a STATUS= line every few seconds (updates/s,
buffer rows, ...), and STOPPING=1 on SIGTERM. WATCHDOG=1 pings go out from the
event loop, and only while the trainer thread's heartbeat (``Trainer.alive_at``,
renewed by every update and, while it waits for data, every half second) is
younger than WatchdogSec: a hung event loop or a hung trainer stops the pings
and systemd restarts the learner (``--resume``: from its checkpoint); a trainer
waiting for robots' data keeps them going. A trainer that has ended (a
configuration it cannot train, a crash) is not hung: robots' data keeps being
stored, the STATUS line and ``/status`` say why it stopped.

The sd_notify plumbing is the agent's (``shared.sdnotify``); without
``$NOTIFY_SOCKET`` (not under systemd) nothing here runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from shared.sdnotify import Notifier

from .learner.trainer import Trainer
from .status import LearnerStatus

log = logging.getLogger("fleetrl.service")

STATUS_EVERY_S = 5.0


def load_trainer_imports() -> None:
    """What the trainer's first build would import on its thread, imported now (before READY).

    Making the first optimizer imports ``torch._dynamo`` (torch loads it lazily): ~2 s of one
    import on an idle 2-core machine, several times that on a loaded one. On the trainer thread
    it is one step with no heartbeat in between, which a short WatchdogSec would count as a hung
    trainer. systemd arms the watchdog at READY: one-off start-up work belongs before it."""
    import torch._dynamo  # noqa: F401


def status_line(s: LearnerStatus) -> str:
    """What ``systemctl status cloud-learner`` shows on its Status: line."""
    parts = [f"{s['updates_per_s']:.1f} updates/s", f"{s['buffer_rows']} rows", f"{s['episodes']} episodes",
             f"policy v{s['policy_version']}", f"{len(s['robots'])} robots linked"]
    if s["success_rate"] is not None:
        parts.append(f"success {s['success_rate']:.0%}")
    head = "serving"
    if s["trainer_error"]:
        head = f"TRAINER STOPPED ({s['trainer_error'][:120]}), storing data"
    elif s["storage"]["holding"]:
        head = "HOLDING robots' data (buffer writes fail)"
    return f"{head}: {', '.join(parts)}"


class LearnerWatchdog:
    """The learner's side of sd_notify; :meth:`run` is a task on the event loop."""

    def __init__(self, notifier: Notifier, period: float | None, snapshot: Callable[[], LearnerStatus],
                 trainer: Callable[[], Trainer | None], status_every: float = STATUS_EVERY_S):
        """``period``: seconds between pings (``watchdog_period()``: half of WatchdogSec), None without a
        watchdog; the trainer counts as hung once its heartbeat is older than WatchdogSec (``2 * period``)."""
        self.notifier, self.period, self.snapshot, self.trainer = notifier, period, snapshot, trainer
        self.status_every = status_every
        self.stall_s = 2 * period if period is not None else None
        self.pings = 0
        self._stalled = False

    def trainer_stall(self, now: float | None = None) -> float | None:
        """Seconds since the trainer's last heartbeat, when that is longer than WatchdogSec; else None.
        A trainer that has ended (or never started) is not hung."""
        t = self.trainer()
        if t is None or self.stall_s is None or not t.is_alive():
            return None
        age = (time.monotonic() if now is None else now) - t.alive_at
        return age if age > self.stall_s else None

    def ping(self) -> bool:
        """WATCHDOG=1, if the trainer is not hung; logs the moment it is found hung (and any recovery)."""
        stall = self.trainer_stall()
        if stall is not None:
            if not self._stalled:
                self._stalled = True
                log.error("event=trainer_stalled heartbeat_age_s=%.1f action=watchdog_pings_stopped (systemd "
                          "restarts the learner after WatchdogSec)", stall)
            return False
        if self._stalled:
            self._stalled = False
            log.warning("event=trainer_progressing_again action=watchdog_pings_resumed")
        if self.notifier.send("WATCHDOG=1"):
            self.pings += 1
        return True

    def status(self) -> None:
        try:
            text = status_line(self.snapshot())
        except Exception as e:  # a status line must never take the learner down
            log.debug("event=status_line_failed error=%r", e)
            return
        stall = self.trainer_stall()
        if stall is not None:
            text = f"TRAINER HUNG (no progress for {stall:.0f} s): {text}"
        self.notifier.status(text)

    async def run(self) -> None:
        tick = self.status_every if self.period is None else min(self.status_every, self.period / 2)
        next_ping = next_status = time.monotonic()
        while True:
            now = time.monotonic()
            if self.period is not None and now >= next_ping:
                self.ping()
                next_ping = now + self.period
            if now >= next_status:
                self.status()
                next_status = now + self.status_every
            await asyncio.sleep(tick)
