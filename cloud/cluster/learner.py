"""The cluster learner: the ordinary SAC ``Trainer`` over a buffer made of shards.

``ShardedBuffer`` is a ``SampleSource`` as a ReplayBuffer is: shards push their memory
sizes when new rows are durable (no polling), and a sample is drawn from each
shard in proportion to its size, so only samples cross the network.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import LearnerAlgoConfig
from shared.weights import WeightsBlob

from ..buffer import Batch, Dims
from ..groups.group import TENSORBOARD
from ..learner.tblog import RunStats
from ..learner.trainer import Trainer
from .channels import NAMESPACE, shard_actor_name
from .shard import node_id

log = logging.getLogger("fleetrl.cluster.learner")


def _images(mem: dict[str, Any]) -> tuple[tuple[str, tuple[int, int, int]], ...]:
    """The cameras a shard serves, from its report (``[[name, [H, W, C]], ...]``)."""
    return tuple((str(name), (int(h), int(w), int(c))) for name, (h, w, c) in mem.get("images", ()))


def _shape(dims: Dims) -> tuple[object, ...]:
    """What every shard's batches must agree on to be concatenated."""
    return dims.obs_dim, dims.act_dim, dims.images


class ShardedBuffer:
    """A ``SampleSource`` over shards: sizes as the shards last reported them, batches drawn across them
    (camera frames too: each shard samples its own, memory and history, and the parts are concatenated)."""

    def __init__(self, shards: list[str], namespace: str = NAMESPACE, group: str | None = None):
        self.names, self.namespace, self.group = list(shards), namespace, group  # group None: each shard's only one
        self._dims: Dims | None = None
        self._mem: dict[str, dict[str, Any]] = {}
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.samples_by_shard: dict[str, int] = {n: 0 for n in shards}

    def update(self, shard: str, mem: dict[str, Any]) -> None:
        """A shard's report (``BufferShard._memory``); one whose dims differ from the first is ignored."""
        with self._lock:
            if mem.get("obs_dim"):
                dims = Dims(int(mem["obs_dim"]), int(mem["act_dim"]), tuple(mem["obs_fields"]), _images(mem))
                if self._dims is not None and _shape(dims) != _shape(self._dims):
                    log.error("event=shard_spec_mismatch shard=%s (ignored)", shard)
                    return
                self._dims = dims
            self._mem[shard] = mem

    def _total(self, key: str) -> int:
        with self._lock:
            return sum(int(m.get(key, 0)) for m in self._mem.values()) if self._dims is not None else 0

    @property
    def size(self) -> int:
        return self._total("size")

    @property
    def added(self) -> int:
        return self._total("added")

    @property
    def dims(self) -> Dims | None:
        return self._dims

    @property
    def rows(self) -> int:
        return self._total("rows")

    @property
    def segment_count(self) -> int:
        return self._total("segments")

    def _handle(self, shard: str) -> Any:
        import ray

        if shard not in self._handles:
            self._handles[shard] = ray.get_actor(shard_actor_name(shard), namespace=self.namespace)
        return self._handles[shard]

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        import ray

        with self._lock:
            names = [n for n, m in self._mem.items() if m.get("size")]
            sizes = np.array([self._mem[n]["size"] for n in names], np.float64)
        counts = rng.multinomial(batch_size, sizes / sizes.sum())
        picked = [(n, int(c)) for n, c in zip(names, counts) if c]
        parts = ray.get([self._handle(n).sample.remote(c, int(rng.integers(1 << 31)), self.group) for n, c in picked])
        for n, c in picked:
            self.samples_by_shard[n] = self.samples_by_shard.get(n, 0) + c
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class LearnerWorker:
    """Runs one Trainer thread per embodiment group; weights go to the cluster publisher actor.

    ``groups`` None: a single-group run, today's learner (one trainer over every shard's one buffer,
    started at once). Otherwise (``groups.mode = "auto"`` or several ``[[groups.named]]``) a group's
    trainer starts when a shard first reports rows of it, over that group's buffers on every shard,
    as a single learner starts one per group: groups appear as robots link, so they share this
    actor's placement (its accelerator) instead of each needing one reserved in advance.

    ``tensorboard_dir``: where ``learner.tensorboard`` writes, on the learner's node (``<data_dir>/tb``); the
    buffer side of the scalars is what the shards report (rows, and rows added as the ingest rate; the shards
    do not count episodes, so there is no success rate)."""

    def __init__(self, algo: dict[str, Any], shards: list[str], publisher: str, namespace: str = NAMESPACE,
                 tensorboard_dir: str | None = None, groups: dict[str, Any] | None = None):
        import ray

        self.algo, self.shards, self.namespace, self.groups = algo, list(shards), namespace, groups
        self.pub = ray.get_actor(publisher, namespace=namespace)
        self.trainers: dict[str, GroupTrainer] = {}
        self.refused: set[str] = set()
        self._lock = threading.Lock()
        if groups is None:
            start_version = ray.get(self.pub.version.remote())  # versions never go back, also across restarts
            self.single: GroupTrainer | None = GroupTrainer(
                None, ShardedBuffer(self.shards, namespace), LearnerAlgoConfig(**algo), self.pub, start_version,
                Path(tensorboard_dir) if tensorboard_dir else None)
        else:
            self.single = None

    def _trainer(self, group: str, mem: dict[str, Any]) -> GroupTrainer | None:
        """This group's trainer, started on the first report with rows; None for a group over the run's limit."""
        if self.single is not None:
            return self.single
        assert self.groups is not None
        with self._lock:
            t = self.trainers.get(group)
            if t is not None or not mem.get("obs_dim") or group in self.refused:
                return t
            named: dict[str, Any] = self.groups["named"]
            if group not in named and (self.groups["mode"] != "auto" or len(self.trainers) >= self.groups["max_groups"]):
                self.refused.add(group)  # the shards refuse such robots; a shard of an older config may still hold some
                log.error("event=group_not_trained group=%s groups=%s (groups.mode=%s, max_groups=%d)", group,
                          sorted(self.trainers), self.groups["mode"], self.groups["max_groups"])
                return None
            import ray

            version, root = ray.get(self.pub.open_group.remote(group))
            t = GroupTrainer(group, ShardedBuffer(self.shards, self.namespace, group),
                             LearnerAlgoConfig(**named.get(group, self.algo)), self.pub, version, Path(root) / TENSORBOARD)
            self.trainers[group] = t
            log.info("event=group_trainer_started group=%s root=%s start_version=%d", group, root, version)
            return t

    def notify(self, shard: str, group: str, mem: dict[str, Any]) -> None:
        t = self._trainer(group, mem)
        if t is not None:
            t.buffer.update(shard, mem)
            t.trainer.notify_data()

    def stats(self) -> dict[str, Any]:
        if self.single is not None:
            return {"node_id": node_id(), **self.single.stats()}
        groups = {name: t.stats() for name, t in list(self.trainers.items())}
        errors = [g["error"] for g in groups.values() if g["error"]]
        return {"node_id": node_id(), "updates": sum(g["updates"] for g in groups.values()),
                "version": max((g["version"] for g in groups.values()), default=0),
                "rows_seen": sum(g["rows_seen"] for g in groups.values()),
                "error": errors[0] if errors else None, "groups": groups}

    def stop(self) -> None:
        for t in [self.single] if self.single is not None else list(self.trainers.values()):
            t.trainer.stop()
        for t in [self.single] if self.single is not None else list(self.trainers.values()):
            t.trainer.join(10.0)


class GroupTrainer:
    """One group's sharded buffer and its Trainer thread, publishing under the group's name."""

    def __init__(self, group: str | None, buffer: ShardedBuffer, algo: LearnerAlgoConfig, pub: Any,
                 start_version: int, tensorboard_dir: Path | None):
        self.group, self.buffer = group, buffer

        def publish(blob: WeightsBlob) -> None:  # on the trainer thread; fire and forget
            if group is None:
                pub.publish.remote(blob)
            else:
                pub.publish.remote(blob, group)

        def run_stats() -> RunStats:
            return RunStats(buffer_rows=buffer.rows, ingested_rows=buffer.added)

        self.trainer = Trainer(buffer, algo, publish, start_version=start_version,
                               tensorboard_dir=tensorboard_dir, run_stats=run_stats)
        if group is not None:
            self.trainer.name = f"trainer-{group}"
        self.trainer.start()

    def stats(self) -> dict[str, Any]:
        t = self.trainer
        return {"updates": t.updates, "version": t.version,
                "samples_by_shard": dict(self.buffer.samples_by_shard),
                "rows_seen": self.buffer.added,
                "error": repr(t.error) if t.error else None}


class NotifyLearner:
    """Picklable callback a shard calls when rows are durable; finds the learner by name."""

    def __init__(self, name: str, namespace: str = NAMESPACE):
        self.name, self.namespace = name, namespace
        self._handle: Any = None

    def __call__(self, shard: str, group: str, mem: dict[str, Any]) -> None:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=self.namespace)
        self._handle.notify.remote(shard, group, mem)

    def __reduce__(self) -> tuple[Any, ...]:
        return (NotifyLearner, (self.name, self.namespace))
