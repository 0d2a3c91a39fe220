"""Start fleetrl's components as Ray actors where the placement says.

Order matters for clear failures: the placement is checked against the config
and then against the live Ray nodes *before* any actor exists; each
component's placement group must become ready within a timeout or the start
stops with the component and units named. Shards restart on failure
(``max_restarts``) inside their placement-group bundle, i.e. on the same node
and data dir, and recover from their Parquet segments.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from shared.config import LearnerConfig

from ..app import TENSORBOARD
from ..learner.tblog import summary_writer_class
from .channels import NAMESPACE, ShardChannel, shard_actor_name
from .config import ClusterConfig, Placement
from .learner import LearnerWorker, NotifyLearner
from .placement import PlacementError, bundle, check, check_live, node_key
from .publisher import ClusterPublisher
from .rollout import RolloutWorker
from .shard import BufferShard, shard_config

log = logging.getLogger("fleetrl.cluster.runtime")

LEARNER = "fleetrl-learner"
PUBLISHER = "fleetrl-publisher"
PG_READY_TIMEOUT_S = 30.0


class ClusterRolloutWorker(RolloutWorker):
    """A rollout worker whose sink is the sharded channel (built in its own process)."""

    def __init__(self, index: int, cluster: ClusterConfig, chunk_steps: int, seed: int, namespace: str = NAMESPACE):
        assert cluster.placement.rollout is not None
        super().__init__(index, cluster.placement.rollout, ShardChannel(cluster, namespace=namespace), chunk_steps, seed)


def _actor_options(p: Placement) -> dict[str, Any]:
    b = bundle(p)
    return {"num_cpus": b.pop("CPU", 0), "num_gpus": b.pop("GPU", 0), "resources": b}


def check_shards(cfg: LearnerConfig, cluster: ClusterConfig) -> None:
    """Each shard's own learner config must pass the single learner's checks (TLS beyond loopback...):
    refused here, before any actor exists, with the shard named."""
    for s in cluster.placement.shards:
        shard_config(cfg, s.name, s.host, s.port)


def grouped(cfg: LearnerConfig) -> bool:
    """Whether the run has several embodiment groups (``[groups]``): each trained and published under its name."""
    return cfg.groups.mode == "auto" or len(cfg.groups.named) > 1


def learner_groups(cfg: LearnerConfig) -> dict[str, Any] | None:
    """What the learner needs to know of the groups (None: a single-group run)."""
    if not grouped(cfg):
        return None
    return {"mode": cfg.groups.mode, "max_groups": cfg.groups.max_groups,
            "named": {g.name: cfg.group_learner(g).model_dump() for g in cfg.groups.named}}


class ClusterRuntime:
    """The components of one run on a Ray cluster (``ray.init`` done by the caller)."""

    def __init__(self, cfg: LearnerConfig, cluster: ClusterConfig, namespace: str = NAMESPACE):
        self.cfg, self.cluster, self.namespace = cfg, cluster, namespace
        self.pgs: dict[str, Any] = {}
        self.shards: dict[str, Any] = {}
        self.learner: Any = None
        self.publisher: Any = None
        self.workers: list[Any] = []
        self.rollout_group: str | None = None  # the embodiment group the rollout workers joined (grouped runs)
        self._synced = False

    def _placement_groups(self) -> None:
        """One placement group per component, all requested at once; name any that never fit."""
        import ray
        from ray.util.placement_group import placement_group

        comps = dict(self.cluster.components())
        for comp, p in comps.items():
            self.pgs[comp] = placement_group([bundle(p)] * p.replicas, strategy=p.strategy, name=f"{self.namespace}-{comp}")
        refs = {self.pgs[c].ready(): c for c in comps}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=PG_READY_TIMEOUT_S)
        if pending:
            raise PlacementError("unsatisfiable placement (Ray): " + "; ".join(
                f"{refs[r]} x{comps[refs[r]].replicas} on group {comps[refs[r]].group!r} not placed within "
                f"{PG_READY_TIMEOUT_S:g}s, each replica needs {bundle(comps[refs[r]])}" for r in pending))

    def _opts(self, comp: str, p: Placement, index: int = 0, **extra: Any) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(self.pgs[comp], placement_group_bundle_index=index)
        return {**_actor_options(p), "scheduling_strategy": strategy, "namespace": self.namespace, **extra}

    def start(self) -> None:
        """Check, then place and start everything; on any failure stop what was started."""
        import ray

        check(self.cluster)
        check_shards(self.cfg, self.cluster)
        if self.cfg.learner.tensorboard:  # a missing package: one line here, not an actor's traceback later
            summary_writer_class()
        check_live(self.cluster, ray.nodes())
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        import ray

        pl, names = self.cluster.placement, [s.name for s in self.cluster.placement.shards]
        self._placement_groups()
        # Create every actor before waiting on any: their processes start in parallel.
        shard_cls = ray.remote(BufferShard)
        for s in pl.shards:
            comp = f"shards.{s.name}"
            self.shards[s.name] = shard_cls.options(  # type: ignore[attr-defined]
                **self._opts(comp, s, name=shard_actor_name(s.name), max_restarts=-1, max_task_retries=3),
            ).remote(s.name, self.cfg, s.host, s.port, NotifyLearner(LEARNER, self.namespace))
        self.publisher = ray.remote(ClusterPublisher).options(  # type: ignore[attr-defined]
            **self._opts("publisher", pl.publisher, name=PUBLISHER, max_restarts=-1),
        ).remote(self.cfg.data_dir / "policy", names, self.namespace,
                 home=self.cfg.groups.named[0].name if self.cfg.groups.named else None)
        self.learner = ray.remote(LearnerWorker).options(  # type: ignore[attr-defined]
            **self._opts("learner", pl.learner, name=LEARNER, max_concurrency=4),
        ).remote(self.cfg.learner.model_dump(), names, PUBLISHER, self.namespace,
                 tensorboard_dir=str(self.cfg.data_dir / TENSORBOARD), groups=learner_groups(self.cfg))
        if pl.rollout is not None:
            cls = ray.remote(ClusterRolloutWorker)
            self.workers = [
                cls.options(**self._opts("rollout", pl.rollout, i)).remote(  # type: ignore[attr-defined]
                    i, self.cluster, self.cfg.limits.max_chunk_rows, self.cfg.learner.seed, self.namespace)
                for i in range(pl.rollout.replicas)
            ]
        ray.get([a.endpoint.remote() for a in self.shards.values()]  # started, buffers recovered
                + [self.learner.stats.remote()] + [w.stats.remote() for w in self.workers])
        ray.get([a.announce.remote() for a in self.shards.values()])
        log.info("event=cluster_started shards=%s rollout_workers=%d", names, len(self.workers))

    # -- rollouts -------------------------------------------------------------

    def init_weight_sync(self) -> str:
        """Form the weight-sync process group: publisher rank 0, workers 1..N."""
        import ray

        if grouped(self.cfg):
            self.rollout_group = self._rollout_group()
        addr = ray.get(self.publisher.sync_address.remote())
        ws = self.cluster.weight_sync.model_dump()
        world = len(self.workers) + 1
        refs = [self.publisher.init_sync.remote(addr, world, ws)]
        refs += [w.init_sync.remote(addr, i + 1, world, ws) for i, w in enumerate(self.workers)]
        backends = ray.get(refs)
        self._synced = True
        return backends[0]

    def _rollout_group(self) -> str:
        """The one group the rollout workers joined (one weight-sync round serves one policy)."""
        import ray

        ids = [st["robot_id"] for st in ray.get([w.stats.remote() for w in self.workers])]
        found = ray.get([self.shards[self.cluster.shard_for(rid)].group_of.remote(rid) for rid in ids])
        if len(set(found)) != 1 or found[0] is None:
            raise PlacementError(f"cluster.placement.rollout: the workers joined groups {dict(zip(ids, found))}; "
                                 "all must be of one embodiment group")
        return str(found[0])

    def rollout_round(self) -> list[dict[str, Any]]:
        """Swap weights on every worker (one sync round), then one rollout each."""
        import ray

        if not self._synced:
            self.init_weight_sync()
        ray.get([self.publisher.sync_round.remote(self.rollout_group)] + [w.sync_round.remote() for w in self.workers])
        return ray.get([w.rollout.remote() for w in self.workers])

    def run_rollouts(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.rollout_round()

    # -- introspection --------------------------------------------------------

    def endpoints(self) -> dict[str, str]:
        import ray

        return dict(zip(self.shards, ray.get([a.endpoint.remote() for a in self.shards.values()])))

    def where(self) -> dict[str, list[str]]:
        """Component -> the fleetrl node name each replica runs on."""
        import ray

        names = {}
        for n in ray.nodes():
            names[n["NodeID"]] = next((k[len(node_key("")):] for k in n["Resources"] if k.startswith(node_key(""))), n["NodeID"])
        out = {f"shards.{s}": [names[ray.get(a.stats.remote())["node_id"]]] for s, a in self.shards.items()}
        out["learner"] = [names[ray.get(self.learner.stats.remote())["node_id"]]]
        out["publisher"] = [names[ray.get(self.publisher.stats.remote())["node_id"]]]
        if self.workers:
            out["rollout"] = [names[s["node_id"]] for s in ray.get([w.stats.remote() for w in self.workers])]
        return out

    def groups(self) -> dict[str, dict[str, Any]]:
        """Each embodiment group: the shards holding its data, its robots and rows, its policy version and
        updates (``serve --cluster`` prints it; a single-group run has one)."""
        import ray

        shards = dict(zip(self.shards, ray.get([a.stats.remote() for a in self.shards.values()])))
        learner = ray.get(self.learner.stats.remote())
        trained = learner.get("groups")
        out: dict[str, dict[str, Any]] = {}
        for shard, st in shards.items():
            for name, g in st["groups"].items():
                if not g["rows"] and not g["policy_version"]:
                    continue  # a group slot no robot has filled here
                e = out.setdefault(name, {"shards": [], "robots": [], "rows": 0, "driver": g["driver"],
                                          "policy_version": 0, "updates": 0})
                e["shards"].append(shard)
                e["robots"] = sorted({*e["robots"], *g["rows_by_robot"]})
                e["rows"] += g["rows"]
        for name, e in out.items():
            t = trained.get(name) if trained is not None else (learner if len(out) == 1 else None)
            if t is not None:
                e["policy_version"], e["updates"] = t["version"], t["updates"]
        return out

    def stop(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if self.learner is not None:
            try:
                ray.get(self.learner.stop.remote(), timeout=15)
            except Exception as e:
                log.warning("event=learner_stop_failed error=%r", e)
        for a in self.shards.values():
            try:
                ray.get(a.close.remote(), timeout=15)
            except Exception as e:
                log.warning("event=shard_close_failed error=%r", e)
        for a in [*self.workers, self.publisher, self.learner, *self.shards.values()]:
            if a is not None:
                ray.kill(a, no_restart=True)
        for pg in self.pgs.values():
            remove_placement_group(pg)
        self.shards, self.workers, self.pgs = {}, [], {}
        self.learner = self.publisher = None
