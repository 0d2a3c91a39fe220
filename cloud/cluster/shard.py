"""A buffer shard: one site's gateway and replay buffer, in its own data dir.

It runs the learner app (``cloud.app.make_app``) for its robot group, so robots
at a site link to their site's node and their data is ingested, deduplicated
and sealed there; only samples travel to the learner. Simulation rollout
workers put chunks through the same ``Ingest``. The app runs without a
trainer (the cluster learner trains); its weight publisher relays the
cluster's weights to the robots linked here.

Restarting a shard (Ray restarts a killed actor) rebuilds it from its Parquet
segments and manifest: the durability work is the recovery.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from aiohttp import web
from pydantic import ValidationError

from shared.config import LearnerConfig
from shared.errors import ConfigError, SchemaError
from shared.protocol import Chunk
from shared.schema import EpisodeSpec
from shared.weights import WeightsBlob

from ..admission import serve_robot_port
from ..app import make_app
from ..buffer import Batch, ReplayBuffer
from ..groups import Group
from ..keys import GROUPS, REGISTRY
from ..robots import RobotRegistry

log = logging.getLogger("fleetrl.cluster.shard")

ORDER_TIMEOUT_S = 30.0
SOURCES = "sources"  # manifest extra: robot id -> "robot" | "sim"


def shard_config(cfg: LearnerConfig, name: str, host: str | None, port: int) -> LearnerConfig:
    """The run config as this shard sees it: its own data dir, address and port.

    Validated again as a whole, so every check of a single learner's config
    (no plain ws:// beyond loopback without allow_insecure, auth "open" only on
    loopback, ...) holds for each shard's own address too."""
    data = cfg.model_dump()
    data["data_dir"] = Path(cfg.data_dir) / "shards" / name
    data["server"] = {**data["server"], "port": port, "host": host or cfg.server.host}
    if isinstance(data.get("admin"), dict):
        data["admin"] = {**data["admin"], "port": 0}  # several shards may share a node: each its own admin port
    try:
        return LearnerConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"cluster shard {name!r} ({key}): {err['msg'].removeprefix('Value error, ')}") from None


def registry_file(cfg: LearnerConfig) -> Path:
    """The run's one robot table (what `cloud-learner robots add --config run.toml` writes): every shard reads it."""
    from ..admin_client import registry_path

    return registry_path(cfg)


def node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # not in Ray
        return None


class BufferShard:
    """Gateway + buffers for the robots routed to shard ``name``: one buffer per embodiment group
    (``cloud.groups``: the same registry as a single learner's), each reported, sampled and sent
    weights under its group's name."""

    def __init__(self, name: str, cfg: LearnerConfig, host: str | None = None, port: int = 0,
                 notify: Callable[[str, str, dict[str, Any]], None] | None = None):
        self.name, self.notify = name, notify
        self.cfg = shard_config(cfg, name, host, port)
        self.registry = registry_file(cfg)
        self._runner: web.AppRunner | None = None
        self._url = ""
        self._start_lock: asyncio.Lock | None = None
        self._order: dict[str, asyncio.Condition] = {}
        self._claimed: dict[str, int] = {}
        self._producers: dict[str, Group] = {}  # rollout worker id -> the group its hello joined
        self.samples_served = 0

    async def _ensure(self) -> web.Application:
        """Start the app on first use (also after a restart): recovery runs in its startup."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._runner is None:
                app = make_app(self.cfg, resume=False, with_trainer=False)
                app[REGISTRY] = RobotRegistry(self.registry)  # the run's table: enrolment and revocation reach here
                runner, self._url = await serve_robot_port(app, self.cfg.server, shutdown_timeout=2.0)  # as a learner
                app[GROUPS].watch(self._hook)  # every group's durable rows reach the learner, new groups' too
                self._runner = runner
                log.info("event=shard_ready shard=%s url=%s rows=%d groups=%s", self.name, self._url,
                         sum(g.buffer.rows for g in app[GROUPS]), [g.name for g in app[GROUPS]])
        return self._runner.app

    def _hook(self, group: Group) -> None:
        group.ingest.on_durable = lambda rows: self._notify_learner(group)

    def _notify_learner(self, group: Group) -> None:
        if self.notify is not None:
            try:
                self.notify(self.name, group.name, self._memory(group))
            except Exception as e:  # the learner restarting must not fail ingest
                log.warning("event=learner_notify_failed shard=%s group=%s error=%r", self.name, group.name, e)

    @staticmethod
    def _memory(group: Group) -> dict[str, Any]:
        buf = group.buffer
        dims = buf.dims
        if dims is None:
            return {"size": 0, "added": 0}
        return {"size": buf.size, "added": buf.added, "obs_dim": dims.obs_dim, "act_dim": dims.act_dim,
                "obs_fields": list(dims.obs_fields), "rows": buf.rows, "segments": buf.segment_count,
                "images": [[name, list(hwc)] for name, hwc in dims.images]}

    def _group(self, app: web.Application, name: str | None) -> Group | None:
        """A group by name (None: the first group, the single-group run's only one)."""
        return app[GROUPS].first if name is None else app[GROUPS].get(name)

    async def memory(self, group: str | None = None) -> dict[str, Any]:
        """What this shard reports to the learner of a group (None: the first)."""
        app = await self._ensure()
        g = self._group(app, group)
        return self._memory(g) if g is not None else {"size": 0, "added": 0}

    async def announce(self) -> None:
        """Tell the learner what this shard holds (at start, and after either restarts)."""
        app = await self._ensure()
        for g in app[GROUPS]:
            self._notify_learner(g)

    async def endpoint(self) -> str:
        await self._ensure()
        return self._url

    async def hello(self, robot_id: str, spec: dict[str, Any], source: str = "sim",
                    units: Sequence[dict[str, Any]] = ()) -> int:
        """A producer without a websocket (a rollout worker) joins its group as a robot's hello does
        (spec check, group found or started), is tagged with its source; the answer is its resume point."""
        app = await self._ensure()
        group = await app[GROUPS].resolve(robot_id, EpisodeSpec.from_dict(spec), units)
        self._producers[robot_id] = group
        buf = group.buffer
        sources = dict(buf.extra(SOURCES) or {})
        if sources.get(robot_id) != source:
            sources[robot_id] = source
            await asyncio.to_thread(buf.set_extra, SOURCES, sources)
        return buf.hwm(robot_id)

    async def group_of(self, robot_id: str) -> str | None:
        """The group a producer's hello joined (or that holds its data)."""
        app = await self._ensure()
        group = self._producers.get(robot_id) or app[GROUPS].home_of(robot_id)
        return group.name if group is not None else None

    async def put(self, robot_id: str, chunk: Chunk) -> int:
        """Ingest one chunk into the producer's group; returns the robot's durable mark once it is stored.

        Ray may start an async actor's calls out of order; Ingest needs each
        robot's chunks in stream order, so a chunk waits for its predecessor's
        claim (a resend at or below the mark passes at once and is dropped).
        """
        app = await self._ensure()
        group = self._producers.get(robot_id) or app[GROUPS].home_of(robot_id) or app[GROUPS].first  # after a restart
        buf, ingest = group.buffer, group.ingest
        cond = self._order.setdefault(robot_id, asyncio.Condition())
        async with cond:
            try:
                await asyncio.wait_for(
                    cond.wait_for(lambda: max(self._claimed.get(robot_id, 0), buf.hwm(robot_id)) >= chunk.seq - 1),
                    ORDER_TIMEOUT_S,
                )
            except asyncio.TimeoutError:
                raise SchemaError(f"stream gap: seq {chunk.seq} waited for its predecessor", code="stream_gap") from None
            try:
                durable = await ingest.accept(robot_id, chunk)
                self._claimed[robot_id] = max(self._claimed.get(robot_id, 0), chunk.seq)
            finally:
                cond.notify_all()
        await durable
        return buf.hwm(robot_id)

    async def sample(self, batch_size: int, seed: int, group: str | None = None) -> Batch:
        """A batch drawn from one group's buffer here, so only samples leave the site."""
        app = await self._ensure()
        g = self._group(app, group)
        if g is None:
            raise SchemaError(f"shard {self.name!r} holds no group {group!r}", code="no_group")
        self.samples_served += batch_size
        # off the event loop: history reads Parquet row groups, and this loop also serves the site's robots
        return await asyncio.to_thread(g.buffer.sample, batch_size, np.random.default_rng(seed))

    async def publish(self, blob: WeightsBlob, group: str | None = None) -> int:
        """Relay a group's new weights to the robots of that group linked to this shard's gateway
        (a shard without that group relays nothing: its robots are of other embodiments)."""
        app = await self._ensure()
        g = self._group(app, group)
        if g is None:
            return 0
        await g.publisher.publish(blob)
        return g.publisher.version

    async def stats(self) -> dict[str, Any]:
        app = await self._ensure()
        registry = app[GROUPS]
        groups, first = list(registry), registry.first
        return {
            "shard": self.name, "url": self._url, "node_id": node_id(), "data_dir": str(self.cfg.data_dir),
            "rows": sum(g.buffer.rows for g in groups),
            "rows_by_robot": {rid: n for g in groups for rid, n in g.buffer.rows_by_robot.items()},
            "hwm": {rid: n for g in groups for rid, n in g.buffer.marks().items()},
            "sources": {rid: src for g in groups for rid, src in self._sources(g.buffer).items()},
            "segments": sum(g.buffer.segment_count for g in groups),
            "recovery": first.buffer.recovery_report, "samples_served": self.samples_served,
            "policy_version": first.publisher.version, "memory": self._memory(first),
            "groups": {g.name: {"data_dir": str(g.root), "rows": g.buffer.rows,
                                "rows_by_robot": dict(g.buffer.rows_by_robot),
                                "policy_version": g.publisher.version, "driver": g.driver} for g in groups},
        }

    @staticmethod
    def _sources(buf: ReplayBuffer) -> dict[str, str]:
        """Every robot stream here and where its data comes from (robots linked over the gateway: "robot")."""
        tagged = buf.extra(SOURCES) or {}
        return {rid: tagged.get(rid, "robot") for rid in {*buf.marks(), *tagged}}

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
