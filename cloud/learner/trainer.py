"""The training thread: samples the buffer, updates the learner, hands out weights.

It never blocks ingest or robots: it waits on a condition that ingest
notifies when new rows are durable, bounded by the update-to-data ratio, and
publishes by handing a finished blob to a callback. It trains on the device
``learner.device`` names, a state MLP or a CNN over the cameras in
``learner.image_fields``, and samples through a background prefetcher so the
update never waits on I/O. ``learner.algorithm`` picks the learner and what it
samples (:mod:`.algorithms`); ``learner.reward`` what reward each batch carries
(:mod:`.rewards`), whose parts (a classifier) ship with every published policy.

``alive_at`` is its heartbeat (monotonic seconds), renewed after every update
and at least every ``IDLE_BEAT_S`` while it waits for data: systemd's watchdog
(:mod:`cloud.service`) pings only while it is fresh, so a hung trainer gets the
learner restarted and a trainer waiting for robots does not. With
``learner.tensorboard`` it writes TensorBoard scalars (:mod:`.tblog`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from shared.config import LearnerAlgoConfig
from shared.devices import resolve_device
from shared.errors import ConfigError, WeightsError
from shared.faults import hang_point
from shared.weights import WeightsBlob, encode_weights

from ..buffer import Dims, SampleSource
from ..buffer.prefetch import Prefetcher
from . import algorithms, checkpoint, finetune
from .algorithms import Algorithm
from .normalize import ObsNormalizer
from .rewards import RewardSource, build_reward
from .sac import SACConfig
from .tblog import RunStats, TrainingLog

log = logging.getLogger("fleetrl.trainer")


class Trainer(threading.Thread):
    IDLE_BEAT_S = 0.5  # while waiting for data, the heartbeat is renewed this often
    RATE_WINDOW_S = 2.0  # updates_per_s: over this long

    def __init__(
        self, buffer: SampleSource, cfg: LearnerAlgoConfig, publish: Callable[[WeightsBlob], None],
        start_version: int = 0, checkpoint_path: Path | None = None, resume: bool = False,
        published: WeightsBlob | None = None, tensorboard_dir: Path | None = None,
        run_stats: Callable[[], RunStats] | None = None,
    ):
        """``tensorboard_dir``: where ``learner.tensorboard`` writes (``<data_dir>/tb``); ``run_stats``: the
        buffer and ingest counters it logs beside the trainer's own (read on the trainer thread)."""
        super().__init__(name="trainer", daemon=True)
        self.buffer, self.cfg, self.publish = buffer, cfg, publish
        self.version = start_version
        self.checkpoint_path, self.resume = checkpoint_path, resume
        self.resumed_from: int | None = None
        self.published = published  # the newest policy robots already have (from an earlier run), if any
        self.resumed_from_policy: int | None = None  # its version, when training continues from its weights
        self._sac: Algorithm | None = None  # the learner (SAC, or BC for bc/hg_dagger)
        self._source: SampleSource = buffer  # what it samples (the mixed batch for rlpd, the demo ring for bc)
        self._reward: RewardSource | None = None
        self._norm: ObsNormalizer | None = None  # learner.normalize_observations
        self._bc_pretrained = 0  # behaviour-cloning warm-start updates done (checkpointed: done once per run)
        self._prefetcher: Prefetcher | None = None
        self.device: torch.device | None = None  # where training runs, once it has started
        self._published_at = 0
        self._episodes_at_publish = 0  # buffer.episodes_total when the last policy was published (sync_robots)
        self.updates = 0
        self.last_losses: dict[str, float] = {}
        self._updates_per_s = 0.0
        self.error: BaseException | None = None
        self.alive_at = time.monotonic()  # the heartbeat: renewed by every pass of the thread's loop
        self._rate_base = (self.alive_at, 0)  # (time, updates) updates_per_s counts from
        self.tensorboard_dir, self.run_stats = tensorboard_dir, run_stats
        self._tb: TrainingLog | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._checkpoint_asked = self._checkpoint_done = 0  # checkpoints asked for from outside / saved

    def _round_over(self) -> bool:
        """Synchronous publishing: training has caught up with the data (and trained since the last publish),
        and with ``sync_robots`` also each of that many robots has finished an episode since then."""
        if not (self.cfg.publish_when_idle or self.cfg.sync_robots) or self.updates <= self._published_at:
            return False
        total = int(getattr(self.buffer, "episodes_total", 0))  # before _allowed: what it counts was trained on
        if self._allowed():
            return False
        if self.cfg.sync_robots:
            new = total - self._episodes_at_publish
            recent = list(getattr(self.buffer, "episodes", ()))[-new:] if new > 0 else []  # a bounded deque: its
            if len({e["robot_id"] for e in recent}) < self.cfg.sync_robots:  # newest episodes are the ones counted
                return False
        self._episodes_at_publish = total
        return True

    def _publish(self, sac: Algorithm) -> None:
        self.version += 1
        self._published_at = self.updates
        arch: dict[str, Any] = {"actor": sac.actor.arch(), "obs_fields": self._obs_fields()}
        tensors = sac.actor_state()
        if self._norm is not None:  # robots read raw observations: the scaling goes into the first layer
            tensors = self._norm.fold(tensors)
        if self._reward is not None:  # a classifier reward ships with the policy (robots end episodes on success)
            extra_tensors, extra_arch = self._reward.publish_parts()
            tensors.update(extra_tensors)
            arch.update(extra_arch)
        self.publish(encode_weights(tensors, self.version, arch))

    def save_checkpoint(self) -> None:
        """Everything a --resume needs, atomically (on the trainer thread)."""
        if self.checkpoint_path is None or self._sac is None:
            return
        t0 = time.monotonic()
        checkpoint.save(self.checkpoint_path, {
            "sac": self._sac.state_dict(), "algorithm": self.cfg.algorithm, "bc_pretrained": self._bc_pretrained,
            "obs_norm": None if self._norm is None else self._norm.state_dict(),
            "rng": self._rng_state(), "updates": self.updates,
            "policy_version": self.version, "buffer_rows": self.buffer.rows,
            "buffer_segments": self.buffer.segment_count,
        })
        log.info("event=checkpoint_saved updates=%d seconds=%.3f", self.updates, time.monotonic() - t0)

    def _rng_state(self) -> dict[str, Any]:
        """The sampling generator's state after the last batch trained on (drawn-ahead batches not counted)."""
        if self._prefetcher is not None:
            return self._prefetcher.rng_state()
        return dict(self._rng.bit_generator.state)

    def _restore(self, sac: Algorithm, rng: np.random.Generator) -> None:
        """Continue from the checkpoint, and never behind the policy robots already
        run: a published policy newer than the checkpoint (or with no checkpoint
        at all) gives the actor its weights. Whatever happens is logged."""
        ckpt_version = 0
        if self.resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            state = checkpoint.load(self.checkpoint_path)
            try:
                saved = state.get("algorithm", "sac")  # checkpoints from before there was a choice: sac
                if saved != self.cfg.algorithm:
                    raise ValueError(f'learner.algorithm was "{saved}", now "{self.cfg.algorithm}"')
                sac.load_state_dict(state["sac"])
            except ValueError as e:  # the run's learner settings changed since: not a crash, a choice to make
                raise ConfigError(f"{self.checkpoint_path} was trained with other learner settings ({e}); restore "
                                  "those settings to resume, or start a new run in a new data_dir") from None
            if (state.get("obs_norm") is None) != (self._norm is None):
                raise ConfigError(f"{self.checkpoint_path} was trained with learner.normalize_observations = "
                                  f"{state.get('obs_norm') is not None}; restore that setting to resume, or start a "
                                  "new run in a new data_dir")
            if self._norm is not None:
                self._norm = ObsNormalizer.from_state(state["obs_norm"])
            rng.bit_generator.state = state["rng"]
            self.updates = int(state["updates"])
            self._bc_pretrained = int(state.get("bc_pretrained", 0))
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
            tensors = checkpoint.published_actor(blob, self._obs_fields(), sac.actor.arch(), self._norm)
            with torch.no_grad():
                finetune.load_actor(sac, tensors)
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
        """Check what can be checked before any data (the device, the weights files) and say at once what a
        start without a checkpoint will train from: training itself waits for data, possibly for hours."""
        self.device = resolve_device(self.cfg.device)  # ConfigError now, not once learning_starts rows are in
        finetune.check_files(self.cfg)  # encoder_weights, init_policy: a ConfigError now, not once data is in
        algorithms.check_source(self.cfg, self.buffer, self.buffer.dims)
        self._source = algorithms.source_for(self.cfg, self.buffer)
        if self.cfg.sync_robots and not hasattr(self.buffer, "episodes_total"):
            raise ConfigError(f"learner.sync_robots = {self.cfg.sync_robots} needs the single-node learner, which "
                              "counts each robot's episodes; this one trains from shards: set sync_robots = 0")
        if self.cfg.tensorboard:
            if self.tensorboard_dir is None:
                log.warning("event=tensorboard_off reason=no_log_folder (learner.tensorboard is set, but this trainer "
                            "was given no folder to write to)")
            else:  # a missing tensorboard package: a ConfigError now, before anything listens
                self._tb = TrainingLog(self.tensorboard_dir, self.cfg.tensorboard_every, self.run_stats)
                log.info("event=tensorboard_logging logdir=%s every=%d", self.tensorboard_dir, self.cfg.tensorboard_every)
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            if self.published is not None:
                log.warning("event=resume_without_checkpoint checkpoint=none published_policy=v%d "
                            "action=training_continues_from_published_policy_v%d", self.published.version,
                            self.published.version)
            elif self.resume:
                log.warning("event=resume_without_checkpoint checkpoint=none published_policy=none "
                            "action=training_starts_from_%s", "init_policy" if self.cfg.init_policy else "fresh_weights")
        super().start()

    @property
    def updates_per_s(self) -> float:
        """Updates per second over the last RATE_WINDOW_S; 0 while it waits for data, and once the thread has
        not been heard from for two windows (hung, or in one long step: no updates either way)."""
        if time.monotonic() - self.alive_at > 2 * self.RATE_WINDOW_S:
            return 0.0
        return self._updates_per_s

    def beat(self) -> None:
        """The heartbeat: this thread is making progress (or deliberately waiting, not stuck); renews the rate."""
        hang_point("trainer_tick")  # FLEETRL_HANG_AT=trainer_tick:n: the watchdog tests' real hang
        now = self.alive_at = time.monotonic()
        t0, n0 = self._rate_base
        if now - t0 >= self.RATE_WINDOW_S:
            self._updates_per_s = (self.updates - n0) / (now - t0)
            self._rate_base = (now, self.updates)

    def _wait_for_work(self) -> None:
        """Until there is data to train on or a stop; the heartbeat goes on while it waits."""
        with self._cond:
            while not (self._stopping or self._allowed() or self._checkpoint_asked > self._checkpoint_done):
                self.beat()
                self._cond.wait(self.IDLE_BEAT_S)
        self.beat()

    def notify_data(self, rows: int = 0) -> None:
        with self._cond:
            self._cond.notify_all()

    def checkpoint_now(self, timeout: float = 60.0) -> bool:
        """Have the trainer thread save its checkpoint between two updates, and wait for it. False when
        training has not started (nothing to save), the trainer stopped, or it did not save within ``timeout``."""
        with self._cond:
            if self._sac is None or self._stopping or not self.is_alive():
                return False
            self._checkpoint_asked += 1
            mine = self._checkpoint_asked
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._checkpoint_done >= mine or self._stopping or not self.is_alive(), timeout)
            return self._checkpoint_done >= mine

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _obs_fields(self) -> list[str]:
        dims = self.buffer.dims
        return list(dims.obs_fields) if dims is not None else []

    def _allowed(self) -> bool:
        if self.buffer.dims is None:
            return False
        if self.cfg.algorithm in algorithms.CLONING:  # learns from the demo ring alone, as soon as it has rows
            demo_size = int(getattr(self.buffer, "demo_size", 0))
            return demo_size > 0 and self.updates < self.cfg.utd_ratio * int(getattr(self.buffer, "demo_added", 0))
        if self.buffer.size < self.cfg.learning_starts:
            return False
        return self.updates < self.cfg.utd_ratio * self.buffer.added

    def run(self) -> None:
        try:
            self._run()
        except ConfigError as e:  # the run's settings cannot be trained as given: say what, without a traceback
            log.error("event=trainer_config_error error=%s", e)
            self.error = e  # after the log line: whoever sees the error finds it explained
        except BaseException as e:
            log.exception("event=trainer_crashed")
            self.error = e
        finally:
            if self._tb is not None:
                self._tb.close()

    def _sac_config(self, dims: Dims) -> SACConfig:
        """The config's architecture over what the buffer serves: a CNN needs every camera it names."""
        cfg = self.cfg
        images: tuple[tuple[str, tuple[int, int, int]], ...] = ()
        if cfg.policy_kind == "cnn_gaussian":
            served = dict(dims.images)
            missing = [f for f in cfg.image_fields if f not in served]
            if missing:
                raise ConfigError(
                    f"learner.image_fields names camera field(s) {missing} that the replay buffer does not serve "
                    f"(it serves {list(served) or 'no camera fields'}; state fields {list(dims.obs_fields)}): "
                    "record those cameras on the robots, or drop them from learner.image_fields")
            images = tuple((f, served[f]) for f in cfg.image_fields)
        same = ("lr", "gamma", "tau", "batch_size", "init_alpha", "encoder_latent", "augment_pad", "critics",
                "critic_subset", "critic_layer_norm", "critic_warmup_updates", "bc_weight", "bc_decay_updates")
        return SACConfig(hidden=tuple(cfg.hidden), images=images, encoder_channels=tuple(cfg.encoder_channels),
                         **{k: getattr(cfg, k) for k in same})

    def _build(self, dims: Dims) -> Algorithm:
        device = self.device if self.device is not None else resolve_device(self.cfg.device)
        self.device = device
        algorithms.check_source(self.cfg, self.buffer, dims)
        self._source = algorithms.source_for(self.cfg, self.buffer)
        sac = algorithms.build(self.cfg, dims, self._sac_config(dims), device)
        if self.cfg.encoder_weights is not None:
            encoder = getattr(sac, "encoder", None)
            if encoder is None:
                raise ConfigError(f"learner.encoder_weights = {str(self.cfg.encoder_weights)!r} but the policy "
                                  f"({self.cfg.policy_kind}) has no image encoder: set learner.image_fields")
            n = checkpoint.load_encoder_weights(Path(self.cfg.encoder_weights), encoder)
            log.info("event=encoder_weights_loaded path=%s tensors=%d", self.cfg.encoder_weights, n)
        return sac

    def _sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if self._prefetcher is not None:
            batch = self._prefetcher.get()
        else:
            batch = {k: torch.from_numpy(v) for k, v in self._source.sample(self.cfg.batch_size, rng).items()}
        batch = batch if self._reward is None else self._reward(batch)
        return batch if self._norm is None else self._norm(batch)

    def _normalizer(self, sac: Algorithm) -> ObsNormalizer | None:
        """Fitted now from what can be sampled (a checkpoint's statistics replace these in _restore)."""
        if not self.cfg.normalize_observations:
            return None
        if sac.actor.arch()["kind"] not in ("mlp_gaussian", "flow"):
            raise ConfigError("learner.normalize_observations applies to state policies (mlp_gaussian, flow); this "
                              f"run trains {sac.actor.arch()['kind']}: turn it off")
        return ObsNormalizer.fit(self._source, self.cfg.seed)

    def _run(self) -> None:
        torch.set_num_threads(self.cfg.threads)
        self._wait_for_work()
        if self._stopping:
            return
        dims = self.buffer.dims
        assert dims is not None
        sac = self._build(dims)
        self._reward = build_reward(self.cfg)
        if sac.device.type == "cuda":  # cuda:N: this thread's kernels and CUDA context go to that GPU, not GPU 0
            torch.cuda.set_device(sac.device)
        rng = np.random.default_rng(self.cfg.seed)
        self._norm = self._normalizer(sac)
        sac = finetune.prepare(sac, self.cfg, self._obs_fields(), self._norm)  # init_policy, LoRA adapters
        self._restore(sac, rng)
        self._sac, self._rng = sac, rng
        if self._bc_pretrained == 0 and self.resumed_from is None and self.cfg.algorithm not in algorithms.CLONING:
            self._bc_pretrained = algorithms.pretrain(sac, self.buffer, self.cfg, rng, self._norm, beat=self.beat)
        if self.cfg.prefetch_batches > 0:  # after the restore: it draws from the checkpointed generator state
            self._prefetcher = Prefetcher(self._source, self.cfg.batch_size, rng, depth=self.cfg.prefetch_batches,
                                          pin_memory=sac.device.type == "cuda")
        log.info("event=training_started algorithm=%s reward=%s obs_dim=%d act_dim=%d rows=%d demo_rows=%d policy=%s "
                 "cameras=%s device=%s prefetch=%d", self.cfg.algorithm, self._reward.name, dims.obs_dim,
                 dims.act_dim, self.buffer.size, int(getattr(self.buffer, "demo_size", 0)), sac.actor.arch()["kind"],
                 list(sac.image_fields), sac.device, self.cfg.prefetch_batches)
        try:
            self._loop(sac)
        finally:
            if self._prefetcher is not None:
                self._prefetcher.close()

    def _loop(self, sac: Algorithm) -> None:
        self._rate_base = (time.monotonic(), self.updates)  # a resumed run's updates are not this run's rate
        tb = self._tb
        if tb is not None:
            tb.begin(self.updates)
        if self.cfg.sync_robots and self.version == 0:  # the robots' first policy: they wait after each episode
            self._episodes_at_publish = int(getattr(self.buffer, "episodes_total", 0))  # from now on (until then
            self._publish(sac)  # they run free, faster than a learner catches up with them)
        while True:
            if self._round_over():
                self._publish(sac)  # caught up with the data: synchronous robots are waiting for this
            self._wait_for_work()
            if self._stopping:
                self.save_checkpoint()
                return
            asked = self._checkpoint_asked
            if asked > self._checkpoint_done:  # someone asked for one (the dashboard, the admin API)
                self.save_checkpoint()
                with self._cond:
                    self._checkpoint_done = asked
                    self._cond.notify_all()
                continue
            self.last_losses = sac.update(self._sample(self._rng))
            self.updates += 1
            if self.updates % self.cfg.publish_every == 0 and not self.cfg.sync_robots:
                self._publish(sac)
            if self.updates % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if tb is not None and tb.due(self.updates):
                tb.log(self.updates, self.last_losses, self.version)
