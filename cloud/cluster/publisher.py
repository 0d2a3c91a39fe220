"""The cluster weight publisher: newest weights to shards (robots) and rollout workers.

Robots get weights over their link from their site's shard (which relays to
its gateway's publisher); rollout workers get them in a ``torch.distributed``
sync round (rank 0 here), between their rollouts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

from shared.weights import WeightsBlob

from ..publisher import WeightPublisher
from .channels import NAMESPACE, shard_actor_name
from .config import WeightSyncConfig
from .shard import node_id
from .weight_sync import WeightSync

log = logging.getLogger("fleetrl.cluster.publisher")


class ClusterPublisher:
    def __init__(self, policy_dir: Path, shards: list[str], namespace: str = NAMESPACE):
        self.pub = WeightPublisher(Path(policy_dir))  # persists the newest blob: versions never go back
        self.shards, self.namespace = list(shards), namespace
        self.sync: WeightSync | None = None

    def _shard(self, name: str) -> Any:
        import ray

        return ray.get_actor(shard_actor_name(name), namespace=self.namespace)

    async def version(self) -> int:
        return self.pub.version

    async def publish(self, blob: WeightsBlob) -> int:
        await self.pub.publish(blob)
        if self.pub.latest is blob:
            results = await asyncio.gather(*[self._shard(n).publish.remote(blob) for n in self.shards], return_exceptions=True)
            for n, r in zip(self.shards, results):
                if isinstance(r, BaseException):  # a restarting shard catches up on the next publish
                    log.warning("event=shard_publish_failed shard=%s error=%r", n, r)
        return self.pub.version

    async def latest(self) -> WeightsBlob | None:
        return self.pub.latest

    async def sync_address(self) -> str:
        """A TCP rendezvous on this node for the weight-sync process group."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        return f"tcp://{ip}:{port}"

    async def init_sync(self, init_method: str, world_size: int, cfg: dict[str, Any]) -> str:
        self.sync = await asyncio.to_thread(WeightSync, 0, world_size, init_method, WeightSyncConfig(**cfg))
        return self.sync.backend

    async def sync_round(self) -> int:
        """Rank 0 of one sync round: broadcast the newest weights if the workers lack them."""
        assert self.sync is not None, "init_sync first"
        await asyncio.to_thread(self.sync.sync, self.pub.latest)
        return self.sync.version

    async def stats(self) -> dict[str, Any]:
        last = self.sync.last if self.sync else None
        return {"node_id": node_id(), "version": self.pub.version,
                "sync": None if last is None else {"version": last.version, "bytes": last.nbytes,
                                                   "buckets": last.buckets, "seconds": last.seconds}}
