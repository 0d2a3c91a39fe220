"""The training thread: samples the buffer, updates SAC, hands out weights.

It never blocks ingest or robots: it waits on a condition that ingest
notifies when new rows are durable, bounded by the update-to-data ratio, and
publishes by handing a finished blob to a callback.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shared.config import LearnerAlgoConfig
from shared.errors import WeightsError
from shared.weights import WeightsBlob, decode_weights, encode_weights

from ..buffer import SampleSource
from . import checkpoint
from .sac import SAC, SACConfig

log = logging.getLogger("fleetrl.trainer")


class Trainer(threading.Thread):
    def __init__(
        self, buffer: SampleSource, cfg: LearnerAlgoConfig, publish: Callable[[WeightsBlob], None],
        start_version: int = 0, checkpoint_path: Path | None = None, resume: bool = False,
        published: WeightsBlob | None = None,
    ):
        super().__init__(name="trainer", daemon=True)
        self.buffer, self.cfg, self.publish = buffer, cfg, publish
        self.version = start_version
        self.checkpoint_path, self.resume = checkpoint_path, resume
        self.resumed_from: int | None = None
        self.published = published  # the newest policy robots already have (from an earlier run), if any
        self.resumed_from_policy: int | None = None  # its version, when training continues from its weights
        self._sac: SAC | None = None
        self._published_at = 0
        self.updates = 0
        self.last_losses: dict[str, float] = {}
        self.updates_per_s = 0.0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stopping = False

    def _publish(self, sac: SAC) -> None:
        self.version += 1
        self._published_at = self.updates
        arch = {"actor": sac.actor.arch(), "obs_fields": self._obs_fields()}
        self.publish(encode_weights(sac.actor_state(), self.version, arch))

    def save_checkpoint(self) -> None:
        """Everything a --resume needs, atomically (on the trainer thread)."""
        if self.checkpoint_path is None or self._sac is None:
            return
        t0 = time.monotonic()
        checkpoint.save(self.checkpoint_path, {
            "sac": self._sac.state_dict(), "rng": self._rng.bit_generator.state, "updates": self.updates,
            "policy_version": self.version, "buffer_rows": self.buffer.rows,
            "buffer_segments": self.buffer.segment_count,
        })
        log.info("event=checkpoint_saved updates=%d seconds=%.3f", self.updates, time.monotonic() - t0)

    def _restore(self, sac: SAC, rng: np.random.Generator) -> None:
        """Continue from the checkpoint, and never behind the policy robots already
        run: a published policy newer than the checkpoint (or with no checkpoint
        at all) gives the actor its weights. Whatever happens is logged."""
        ckpt_version = 0
        if self.resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            state = checkpoint.load(self.checkpoint_path)
            sac.load_state_dict(state["sac"])
            rng.bit_generator.state = state["rng"]
            self.updates = int(state["updates"])
            ckpt_version = int(state["policy_version"])
            self.version = max(self.version, ckpt_version)
            self.resumed_from = self.updates
            log.info("event=learner_resumed updates=%d policy_version=%d buffer_rows_then=%d rows_now=%d",
                     self.updates, self.version, state["buffer_rows"], self.buffer.rows)
        blob = self.published
        if blob is None or blob.version <= ckpt_version:
            return
        what = "resume_without_checkpoint" if self.resumed_from is None else "checkpoint_behind_published_policy"
        try:
            weights = decode_weights(blob.data, blob.sha256, len(blob.data))
            if weights.arch.get("obs_fields") != self._obs_fields():
                raise WeightsError(f"observation fields {weights.arch.get('obs_fields')} differ from this run's "
                                   f"{self._obs_fields()}")
            with torch.no_grad():
                sac.actor.load_state_dict(weights.tensors)
        except (WeightsError, RuntimeError) as e:
            log.error("event=%s checkpoint_version=%d published_version=%d error=%r action=training_without_it; "
                      "v%d onwards will not build on v%d", what, ckpt_version, blob.version, str(e), blob.version + 1,
                      blob.version)
            return
        self.resumed_from_policy = blob.version
        log.log(logging.INFO if what == "resume_without_checkpoint" else logging.WARNING,  # the former was said at start
                "event=%s checkpoint_version=%s updates=%d action=continuing_from_published_policy_v%d "
                "(actor weights; critics %s)", what, ckpt_version or "none", self.updates, blob.version,
                "from the checkpoint" if self.resumed_from is not None else "start fresh")

    def start(self) -> None:
        """Say at once what a start without a checkpoint will train from (training waits for data)."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            if self.published is not None:
                log.warning("event=resume_without_checkpoint checkpoint=none published_policy=v%d "
                            "action=training_continues_from_published_policy_v%d", self.published.version,
                            self.published.version)
            elif self.resume:
                log.warning("event=resume_without_checkpoint checkpoint=none published_policy=none "
                            "action=training_starts_from_fresh_weights")
        super().start()

    def notify_data(self, rows: int = 0) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _obs_fields(self) -> list[str]:
        dims = self.buffer.dims
        return list(dims.obs_fields) if dims is not None else []

    def _allowed(self) -> bool:
        if self.buffer.dims is None or self.buffer.size < self.cfg.learning_starts:
            return False
        return self.updates < self.cfg.utd_ratio * self.buffer.added

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = e
            log.exception("event=trainer_crashed")

    def _run(self) -> None:
        torch.set_num_threads(self.cfg.threads)
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or self._allowed())
        if self._stopping:
            return
        dims = self.buffer.dims
        assert dims is not None
        sac = SAC(
            dims.obs_dim, dims.act_dim,
            SACConfig(hidden=tuple(self.cfg.hidden), lr=self.cfg.lr, gamma=self.cfg.gamma, tau=self.cfg.tau,
                      batch_size=self.cfg.batch_size, init_alpha=self.cfg.init_alpha),
            seed=self.cfg.seed,
        )
        rng = np.random.default_rng(self.cfg.seed)
        self._restore(sac, rng)
        self._sac, self._rng = sac, rng
        log.info("event=training_started obs_dim=%d act_dim=%d rows=%d", dims.obs_dim, dims.act_dim, self.buffer.size)
        t_last, n_last = time.monotonic(), 0
        while True:
            if self.cfg.publish_when_idle and not self._allowed() and self.updates > self._published_at:
                self._publish(sac)  # caught up with the data: a synchronous robot is waiting for this
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._allowed())
                if self._stopping:
                    self.save_checkpoint()
                    return
            batch = {k: torch.from_numpy(v) for k, v in self.buffer.sample(self.cfg.batch_size, rng).items()}
            self.last_losses = sac.update(batch)
            self.updates += 1
            if self.updates % self.cfg.publish_every == 0:
                self._publish(sac)
            if self.updates % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
            now = time.monotonic()
            if now - t_last >= 2.0:
                self.updates_per_s = (self.updates - n_last) / (now - t_last)
                t_last, n_last = now, self.updates
