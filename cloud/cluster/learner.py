"""The cluster learner: the ordinary SAC ``Trainer`` over a buffer made of shards.

``ShardedBuffer`` stands in for a ReplayBuffer: shards push their memory
sizes when new rows are durable (no polling), and a sample is drawn from each
shard in proportion to its size, so only samples cross the network.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.config import LearnerAlgoConfig
from shared.weights import WeightsBlob

from ..learner.trainer import Trainer
from .channels import NAMESPACE, shard_actor_name
from .shard import node_id

log = logging.getLogger("fleetrl.cluster.learner")


@dataclass
class MemoryView:
    """What Trainer reads of a buffer's memory, summed over shards."""

    size: int = 0
    added: int = 0
    obs_dim: int = 0
    act_dim: int = 0


class ShardedBuffer:
    def __init__(self, shards: list[str], namespace: str = NAMESPACE):
        self.names, self.namespace = list(shards), namespace
        self.memory: MemoryView | None = None
        self.obs_fields: list[str] = []
        self._mem: dict[str, dict[str, Any]] = {}
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.samples_by_shard: dict[str, int] = {n: 0 for n in shards}

    def update(self, shard: str, mem: dict[str, Any]) -> None:
        with self._lock:
            if mem.get("obs_dim"):
                if self.memory is not None and (mem["obs_dim"], mem["act_dim"]) != (self.memory.obs_dim, self.memory.act_dim):
                    log.error("event=shard_spec_mismatch shard=%s (ignored)", shard)
                    return
                self.obs_fields = list(mem["obs_fields"])
            self._mem[shard] = mem
            if any(m.get("obs_dim") for m in self._mem.values()):
                first = next(m for m in self._mem.values() if m.get("obs_dim"))
                self.memory = MemoryView(
                    sum(m["size"] for m in self._mem.values()), sum(m["added"] for m in self._mem.values()),
                    first["obs_dim"], first["act_dim"],
                )

    def _handle(self, shard: str) -> Any:
        import ray

        if shard not in self._handles:
            self._handles[shard] = ray.get_actor(shard_actor_name(shard), namespace=self.namespace)
        return self._handles[shard]

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
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
    """Runs the Trainer thread; weights go to the cluster publisher actor."""

    def __init__(self, algo: dict[str, Any], shards: list[str], publisher: str, namespace: str = NAMESPACE):
        import ray

        self.buffer = ShardedBuffer(shards, namespace)
        pub = ray.get_actor(publisher, namespace=namespace)
        start_version = ray.get(pub.version.remote())  # versions never go back, also across restarts

        def publish(blob: WeightsBlob) -> None:  # on the trainer thread; fire and forget
            pub.publish.remote(blob)

        self.trainer = Trainer(self.buffer, LearnerAlgoConfig(**algo), publish, start_version=start_version)  # type: ignore[arg-type]
        self.trainer.start()

    def notify(self, shard: str, mem: dict[str, Any]) -> None:
        self.buffer.update(shard, mem)
        self.trainer.notify_data()

    def stats(self) -> dict[str, Any]:
        t = self.trainer
        return {"node_id": node_id(), "updates": t.updates, "version": t.version,
                "samples_by_shard": dict(self.buffer.samples_by_shard),
                "rows_seen": self.buffer.memory.added if self.buffer.memory else 0,
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
