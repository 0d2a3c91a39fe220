"""Sharded data channels: producers put chunks into the shard their robot id
routes to, with a bounded window of unacked chunks per producer.

A chunk counts against the window until the shard has made it durable, so a
slow shard (slow disk, busy node) blocks its producers instead of growing a
queue: rollout workers wait between chunks, and robots on the websocket path
wait on their credit (``limits.max_inflight_chunks``), which is acked only
after the durable write. Memory is bounded by producers x window.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

from shared.protocol import Chunk

from .config import ClusterConfig

NAMESPACE = "fleetrl"


def shard_actor_name(shard: str) -> str:
    return f"fleetrl-shard-{shard}"


class ShardChannel:
    """Producer end of the sharded FIFO: route by robot id, bounded, ordered per robot."""

    def __init__(self, cluster: ClusterConfig, max_inflight: int | None = None, namespace: str = NAMESPACE):
        self.cluster, self.namespace = cluster, namespace
        self.max_inflight = max_inflight or cluster.channel.max_inflight
        self._handles: dict[str, Any] = {}
        self._inflight: deque[Any] = deque()
        self.blocked = 0  # times a put had to wait for the window (backpressure seen)

    def shard(self, robot_id: str) -> Any:
        import ray

        name = self.cluster.shard_for(robot_id)
        if name not in self._handles:
            self._handles[name] = ray.get_actor(shard_actor_name(name), namespace=self.namespace)
        return self._handles[name]

    def hello(self, robot_id: str, spec: dict[str, Any], source: str, units: Sequence[dict[str, Any]] = ()) -> int:
        """Join the robot's shard and its embodiment group there (``units``: its unit descriptions, which name
        a new group as a robot's hello does); the answer is its durable mark (resume from there)."""
        import ray

        return int(ray.get(self.shard(robot_id).hello.remote(robot_id, spec, source, list(units))))

    def put(self, robot_id: str, chunk: Chunk) -> None:
        """Queue one chunk; blocks while this producer has ``max_inflight`` chunks unacked."""
        import ray

        self._inflight.append(self.shard(robot_id).put.remote(robot_id, chunk))
        if len(self._inflight) > self.max_inflight:
            self.blocked += 1
            ray.get(self._inflight.popleft())  # FIFO: the oldest is acked first; raises its error

    def flush(self) -> None:
        """Wait until everything put is durable (raises the first failure)."""
        import ray

        while self._inflight:
            ray.get(self._inflight.popleft())
