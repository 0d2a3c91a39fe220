"""The cluster weight publisher: newest weights to shards (robots) and rollout workers.

Robots get weights over their link from their site's shard (which relays to
its gateway's publisher); rollout workers get them in a ``torch.distributed``
sync round (rank 0 here), between their rollouts.

With embodiment groups each group has its own policy (versions, folder) and a
group's weights go to each shard under the group's name: a shard relays them to
that group's robots only. The run's own ``<data_dir>/policy`` belongs to the
first ``[[groups.named]]`` entry, else to the first group to train (recorded, so a
restart gives every group its own folder again); other groups keep theirs under
``<data_dir>/groups/<name>/``, as on a single learner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write
from shared.weights import WeightsBlob

from ..groups.group import group_root
from ..publisher import WeightPublisher
from .channels import NAMESPACE, shard_actor_name
from .config import WeightSyncConfig
from .shard import node_id
from .weight_sync import WeightSync

log = logging.getLogger("fleetrl.cluster.publisher")

HOME = "group.json"  # in <data_dir>/policy: the group whose policy lives there


class ClusterPublisher:
    """``home``: the group owning ``policy_dir``'s run folder (the first named group), None to record the first
    group that asks; only used once a group is named (``groups`` runs)."""

    def __init__(self, policy_dir: Path, shards: list[str], namespace: str = NAMESPACE, home: str | None = None):
        self.pub = WeightPublisher(Path(policy_dir))  # persists the newest blob: versions never go back
        self.shards, self.namespace, self.home = list(shards), namespace, home
        self.groups: dict[str, WeightPublisher] = {}
        self._opening = asyncio.Lock()
        self.sync: WeightSync | None = None

    def _shard(self, name: str) -> Any:
        import ray

        return ray.get_actor(shard_actor_name(name), namespace=self.namespace)

    def _claim(self, group: str) -> str:
        """The group whose policy is the run folder's (recorded by the first group that asks)."""
        if self.home is None:
            mark = self.pub.dir / HOME
            try:
                self.home = str(json.loads(mark.read_text())["group"])
            except FileNotFoundError:
                self.home = group
                atomic_write(mark, json.dumps({"group": group}).encode())
        return self.home

    async def open_group(self, group: str) -> tuple[int, str]:
        """A group's publisher (opened from its folder): its newest version and its root folder."""
        pub = await self._group(group)
        return pub.version, str(pub.dir.parent)

    async def _group(self, group: str | None) -> WeightPublisher:
        if group is None:
            return self.pub
        async with self._opening:  # one opening at a time: the run folder is claimed once
            pub = self.groups.get(group)
            if pub is None:
                if group == await asyncio.to_thread(self._claim, group):
                    pub = self.pub
                    pub.group = group
                else:
                    root = group_root(self.pub.dir.parent, group, False)
                    pub = await asyncio.to_thread(WeightPublisher, root / "policy", group)
                self.groups[group] = pub
        return pub

    async def version(self, group: str | None = None) -> int:
        return (await self._group(group)).version

    async def publish(self, blob: WeightsBlob, group: str | None = None) -> int:
        """Persist a group's newest weights, then hand them to every shard under the group's name."""
        pub = await self._group(group)
        await pub.publish(blob)
        if pub.latest is blob:
            relays = [self._shard(n).publish.remote(blob) if group is None else self._shard(n).publish.remote(blob, group)
                      for n in self.shards]
            results = await asyncio.gather(*relays, return_exceptions=True)
            for n, r in zip(self.shards, results):
                if isinstance(r, BaseException):  # a restarting shard catches up on the next publish
                    log.warning("event=shard_publish_failed shard=%s group=%s error=%r", n, group, r)
        return pub.version

    async def latest(self, group: str | None = None) -> WeightsBlob | None:
        return (await self._group(group)).latest

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

    async def sync_round(self, group: str | None = None) -> int:
        """Rank 0 of one sync round: broadcast the newest weights of the rollout workers' group if they lack them."""
        assert self.sync is not None, "init_sync first"
        await asyncio.to_thread(self.sync.sync, (await self._group(group)).latest)
        return self.sync.version

    async def stats(self) -> dict[str, Any]:
        last = self.sync.last if self.sync else None
        return {"node_id": node_id(), "version": self.pub.version,
                "groups": {name: {"version": p.version, "policy_dir": str(p.dir)} for name, p in self.groups.items()},
                "sync": None if last is None else {"version": last.version, "bytes": last.nbytes,
                                                   "buckets": last.buckets, "seconds": last.seconds}}
