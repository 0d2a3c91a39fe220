"""The ``[cluster]`` table of a run config: nodes with typed units, groups, placement.

Strict like every fleetrl config: unknown keys and bad values are errors that
name the key (``cluster.placement.learner.group: ...``), so a typo fails at
start, not after half a cluster is up.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hal_drivers.base import UnitDescription
from shared.errors import ConfigError

_NAME = r"^[A-Za-z0-9._-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UnitConfig(_Strict):
    """One typed hardware unit on a node (CPU cores are the node's ``cpus``)."""

    kind: Literal["robot", "camera", "teleop", "accelerator"]
    name: str = Field(..., pattern=_NAME)
    driver: str | None = Field(None, description="robot/camera/teleop: the registered driver")
    spaces: dict[str, list[int]] = Field(default_factory=dict, description="robot: field -> shape, 'action' included")
    model: str | None = Field(None, description="accelerator: e.g. H100")
    memory_gb: float | None = Field(None, gt=0, description="accelerator: device memory")
    sm_count: int | None = Field(None, gt=0, description="accelerator: streaming multiprocessors")

    @model_validator(mode="after")
    def _kind_fields(self) -> "UnitConfig":
        if self.kind == "robot" and not self.driver:
            raise ValueError(f"robot unit {self.name!r} needs a driver")
        if self.kind != "accelerator" and (self.memory_gb or self.sm_count or self.model):
            raise ValueError(f"{self.kind} unit {self.name!r}: model/memory_gb/sm_count are for accelerators")
        return self

    @classmethod
    def from_description(cls, d: UnitDescription) -> "UnitConfig":
        """A live driver's self-description as a cluster unit (robots describe themselves)."""
        spaces = {k: list(v.shape) for k, v in d.observation.items()}
        if d.action_shape:
            spaces["action"] = list(d.action_shape)
        return cls(kind=d.kind.value, name=d.name, driver=d.driver, spaces=spaces)

    def detail(self) -> str:
        if self.kind == "accelerator":
            parts = [self.model or "gpu", f"{self.memory_gb:g} GB" if self.memory_gb else "", f"{self.sm_count} SMs" if self.sm_count else ""]
            return " ".join(p for p in parts if p)
        spaces = " ".join(f"{k}{tuple(v)}" for k, v in self.spaces.items())
        return " ".join(p for p in (self.driver or "", spaces) if p)


class NodeConfig(_Strict):
    """A cloud host or a robot computer, and the node groups it belongs to."""

    name: str = Field(..., pattern=_NAME)
    groups: list[str] = Field(..., min_length=1)
    cpus: float = Field(1.0, ge=0, description="CPU cores offered to fleetrl components")
    units: list[UnitConfig] = Field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for u in self.units if u.kind == kind)


class Placement(_Strict):
    """Where one component runs and what each of its replicas needs."""

    group: str = Field(..., description="node group whose nodes may host it")
    replicas: int = Field(1, ge=1, le=1024)
    cpus: float = Field(0.5, ge=0, description="CPU cores per replica")
    accelerators: int = Field(0, ge=0, description="accelerator (GPU) units per replica")
    min_accelerator_memory_gb: float = Field(0.0, ge=0)
    robots: int = Field(0, ge=0, description="robot units per replica (components that drive a robot)")
    cameras: int = Field(0, ge=0)
    teleop: int = Field(0, ge=0)
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class ShardPlacement(Placement):
    """A gateway + buffer shard for the robots whose ids match ``robots``."""

    name: str = Field(..., pattern=_NAME)
    robot_ids: list[str] = Field(..., min_length=1, description="robot id patterns (fnmatch) routed here")
    host: str | None = Field(None, description="gateway address on its node (default: the learner's server.host); "
                             "beyond loopback it needs the run's server.tls_cert/tls_key (or server.allow_insecure)")
    port: int = Field(0, ge=0, le=65535, description="gateway port on its node; 0 picks a free one")
    replicas: Literal[1] = 1  # type: ignore[assignment]


class RolloutPlacement(Placement):
    """Simulation rollout workers: several vectorised environments each."""

    driver: str = Field("mujoco_fetch", description="registered simulated-robot driver")
    options: dict[str, Any] = Field(default_factory=dict, description="driver options (seed is set per env)")
    envs_per_worker: int = Field(4, ge=1, le=1024)
    episodes_per_rollout: int = Field(1, ge=1, description="episodes each env runs per rollout (weights swap between rollouts)")


class WeightSyncConfig(_Strict):
    """torch.distributed weight broadcast to rollout workers."""

    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl when CUDA is present, else gloo")
    max_ctas: int = Field(2, ge=1, le=64, description="NCCL: most CTAs (≈SMs) a collective may use")
    min_ctas: int = Field(1, ge=1, le=64, description="NCCL: fewest CTAs a collective uses")
    bucket_mb: float = Field(16.0, gt=0, le=4096, description="broadcast the weights in buckets of this size")
    timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _ctas(self) -> "WeightSyncConfig":
        if self.min_ctas > self.max_ctas:
            raise ValueError(f"min_ctas ({self.min_ctas}) must be <= max_ctas ({self.max_ctas})")
        return self


class ChannelConfig(_Strict):
    max_inflight: int = Field(8, ge=1, le=1024, description="chunks one producer may have unacked at a shard (backpressure)")


class PlacementSection(_Strict):
    learner: Placement = Field(default_factory=lambda: Placement(group="train"))
    publisher: Placement = Field(default_factory=lambda: Placement(group="train", cpus=0.25))
    shards: list[ShardPlacement] = Field(..., min_length=1)
    rollout: RolloutPlacement | None = None


class ClusterConfig(_Strict):
    address: str | None = Field(None, description="default for serve --cluster: ray://host:10001 or auto")
    nodes: list[NodeConfig] = Field(..., min_length=1)
    placement: PlacementSection
    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig)
    channel: ChannelConfig = Field(default_factory=ChannelConfig)

    @model_validator(mode="after")
    def _references(self) -> "ClusterConfig":
        names = [n.name for n in self.nodes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"node names must be unique: {dup}")
        groups = self.groups()
        for comp, p in self.components():
            if p.group not in groups:
                raise ValueError(f"placement.{comp}.group: no node is in group {p.group!r} (groups: {sorted(groups)})")
        shard_names = [s.name for s in self.placement.shards]
        if len(set(shard_names)) != len(shard_names):
            raise ValueError(f"shard names must be unique: {shard_names}")
        return self

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in self.nodes:
            for g in n.groups:
                out.setdefault(g, []).append(n.name)
        return out

    def components(self) -> list[tuple[str, Placement]]:
        """(name, placement) of every component, in start order."""
        p = self.placement
        out: list[tuple[str, Placement]] = [(f"shards.{s.name}", s) for s in p.shards]
        out += [("learner", p.learner), ("publisher", p.publisher)]
        if p.rollout is not None:
            out.append(("rollout", p.rollout))
        return out

    def shard_for(self, robot_id: str) -> str:
        """The shard a robot's data goes to: the first whose patterns match its id."""
        for s in self.placement.shards:
            if any(fnmatch.fnmatchcase(robot_id, pat) for pat in s.robot_ids):
                return s.name
        raise ConfigError(f"cluster.placement.shards: no shard serves robot {robot_id!r}", code="no_shard")


def parse_cluster(data: dict[str, Any] | None) -> ClusterConfig:
    """Validate a ``[cluster]`` table; errors name the key, e.g. ``cluster.nodes.0.cpus``."""
    if data is None:
        raise ConfigError("the run config has no [cluster] table (see docs/cluster.md)")
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(["cluster", *(str(p) for p in err["loc"])])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{key}: {msg}{more}") from None
