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

    def __init__(self, shards: list[str], namespace: str = NAMESPACE):
        self.names, self.namespace = list(shards), namespace
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
        parts = ray.get([self._handle(n).sample.remote(c, int(rng.integers(1 << 31))) for n, c in picked])
        for n, c in picked:
            self.samples_by_shard[n] = self.samples_by_shard.get(n, 0) + c
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class LearnerWorker:
    """Runs the Trainer thread; weights go to the cluster publisher actor.

    ``tensorboard_dir``: where ``learner.tensorboard`` writes, on the learner's node (``<data_dir>/tb``); the
    buffer side of the scalars is what the shards report (rows, and rows added as the ingest rate; the shards
    do not count episodes, so there is no success rate)."""

    def __init__(self, algo: dict[str, Any], shards: list[str], publisher: str, namespace: str = NAMESPACE,
                 tensorboard_dir: str | None = None):
        import ray

        self.buffer = ShardedBuffer(shards, namespace)
        pub = ray.get_actor(publisher, namespace=namespace)
        start_version = ray.get(pub.version.remote())  # versions never go back, also across restarts

        def publish(blob: WeightsBlob) -> None:  # on the trainer thread; fire and forget
            pub.publish.remote(blob)

        buffer = self.buffer

        def run_stats() -> RunStats:
            return RunStats(buffer_rows=buffer.rows, ingested_rows=buffer.added)

        self.trainer = Trainer(self.buffer, LearnerAlgoConfig(**algo), publish, start_version=start_version,
                               tensorboard_dir=Path(tensorboard_dir) if tensorboard_dir else None, run_stats=run_stats)
        self.trainer.start()

    def notify(self, shard: str, mem: dict[str, Any]) -> None:
        self.buffer.update(shard, mem)
        self.trainer.notify_data()

    def stats(self) -> dict[str, Any]:
        t = self.trainer
        return {"node_id": node_id(), "updates": t.updates, "version": t.version,
                "samples_by_shard": dict(self.buffer.samples_by_shard),
                "rows_seen": self.buffer.added,
                "error": repr(t.error) if t.error else None}

    def stop(self) -> None:
        self.trainer.stop()
        self.trainer.join(10.0)


class NotifyLearner:
    """Picklable callback a shard calls when rows are durable; finds the learner by name."""

    def __init__(self, name: str, namespace: str = NAMESPACE):
        self.name, self.namespace = name, namespace
        self._handle: Any = None

    def __call__(self, shard: str, mem: dict[str, Any]) -> None:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=self.namespace)
        self._handle.notify.remote(shard, mem)

    def __reduce__(self) -> tuple[Any, ...]:
        return (NotifyLearner, (self.name, self.namespace))
