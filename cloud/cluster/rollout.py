"""Simulation rollout workers: several environments per worker, stepped together.

A worker is a producer like a robot: robot id ``sim-worker-N``, its own stream
sequence (resumed from its shard's mark), chunks built by ``shared.chunk`` and
put through the sharded channel, so sim episodes land in the same buffer as
real ones, tagged ``source = "sim"``. The policy is fixed for a whole rollout:
weights are swapped only in ``set_weights``/``sync_round``, which a worker
runs between rollouts (an actor runs one call at a time).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol, Sequence, TypedDict

import numpy as np

import hal_drivers
from hal_drivers.base import Robot
from shared.actions import ActionScale
from shared.chunk import StepRecord, make_chunk
from shared.observations import image_shapes, state_sizes
from shared.policy_runner import LoadedPolicy, load_policy
from shared.protocol import Chunk
from shared.weights import WeightsBlob, decode_weights

from .config import RolloutPlacement, WeightSyncConfig
from .shard import node_id
from .weight_sync import WeightSync

log = logging.getLogger("fleetrl.cluster.rollout")

MAX_WEIGHTS = 1 << 31
MAX_PARAMS = 200_000_000  # the robots' default link.max_policy_params: a sim worker loads what a robot would


class RolloutResult(TypedDict):
    robot_id: str
    episodes: int
    rows: int
    successes: int
    policy_version: int  # the one policy every step of the rollout used
    seq: int  # the worker's stream sequence after the rollout
    node_id: str | None  # the Ray node it ran on; None outside Ray


class WorkerStats(TypedDict):
    robot_id: str
    node_id: str | None
    version: int
    rollouts: int
    versions_used: list[int]  # policy version of each rollout so far
    seq: int


class Sink(Protocol):
    def hello(self, robot_id: str, spec: dict[str, Any], source: str, units: Sequence[dict[str, Any]] = ()) -> int: ...
    def put(self, robot_id: str, chunk: Chunk) -> None: ...
    def flush(self) -> None: ...


class RolloutWorker:
    def __init__(self, index: int, cfg: RolloutPlacement, sink: Sink, chunk_steps: int = 50, seed: int = 0):
        self.robot_id = f"sim-worker-{index}"
        self.cfg, self.sink, self.chunk_steps = cfg, sink, chunk_steps
        self.envs: list[Robot] = []
        for i in range(cfg.envs_per_worker):
            unit = hal_drivers.create(cfg.driver, {**cfg.options, "seed": seed + 1000 * index + i})
            if not isinstance(unit, Robot):
                raise TypeError(f"rollout driver {cfg.driver!r} makes a {type(unit).__name__}, not a robot")
            self.envs.append(unit)
        desc = self.envs[0].describe()
        self.spec = desc.episode_spec()
        self.scale = ActionScale(desc.action_low, desc.action_high)
        self.state_fields = state_sizes(self.spec)
        self.image_fields = image_shapes(self.spec)
        self.policy: LoadedPolicy | None = None  # replaced only between rollouts
        self.seq = sink.hello(self.robot_id, self.spec.to_dict(), "sim", [desc.to_dict()])  # resume after the durable mark
        self.rng = np.random.default_rng(seed + index)
        self.sync: WeightSync | None = None
        self.rollouts = 0
        self.versions_used: list[int] = []

    # -- weights, between rollouts ------------------------------------------

    @property
    def version(self) -> int:
        return self.policy.version if self.policy is not None else 0

    def set_weights(self, blob: WeightsBlob | None) -> int:
        if blob is not None and blob.version > self.version:
            weights = decode_weights(blob.data, blob.sha256, MAX_WEIGHTS)
            self.policy = load_policy(weights, self.state_fields, self.spec.action_dim, MAX_PARAMS,
                                      limit_name="cloud.cluster.rollout.MAX_PARAMS", image_fields=self.image_fields)
        return self.version

    def init_sync(self, init_method: str, rank: int, world_size: int, cfg: dict[str, Any]) -> str:
        self.sync = WeightSync(rank, world_size, init_method, WeightSyncConfig(**cfg))
        return self.sync.backend

    def sync_round(self) -> int:
        assert self.sync is not None, "init_sync first"
        return self.set_weights(self.sync.sync())

    # -- rollouts -------------------------------------------------------------

    def _actions(self, obs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, int]:
        cur = self.policy
        if cur is None:
            return self.scale.sample(self.rng, len(obs)), 0
        return self.scale.to_robot(cur.act_batch(obs)), cur.version

    def rollout(self) -> RolloutResult:
        """Run ``episodes_per_rollout`` episodes on every env with one policy; store them."""
        version = self.version
        episodes = rows = successes = 0
        for _ in range(self.cfg.episodes_per_rollout):
            obs = [env.reset() for env in self.envs]
            steps: list[list[StepRecord]] = [[] for _ in self.envs]
            live = list(range(len(self.envs)))
            while live:
                acts, v = self._actions([obs[i] for i in live])
                assert v == version, "weights changed mid-rollout"
                for i, a in zip(live, acts):
                    a = self.envs[i].clamp(a)
                    r = self.envs[i].step(a)
                    steps[i].append(StepRecord(obs[i], a, r.reward, r.observation, r.terminated, r.truncated,
                                               r.success, policy_version=version, step=len(steps[i])))
                    obs[i] = r.observation
                live = [i for i in live if not (steps[i][-1].terminated or steps[i][-1].truncated)]
            for ep in steps:
                self._store(ep)
                rows += len(ep)
                successes += int(ep[-1].success)
            episodes += len(steps)
        self.sink.flush()  # the rollout's data is durable before the next weights swap
        self.rollouts += 1
        self.versions_used.append(version)
        return {"robot_id": self.robot_id, "episodes": episodes, "rows": rows, "successes": successes,
                "policy_version": version, "seq": self.seq, "node_id": node_id()}

    def _store(self, steps: list[StepRecord]) -> None:
        eid = f"{self.robot_id}-{uuid.uuid4().hex[:12]}"
        for start in range(0, len(steps), self.chunk_steps):
            chunk = make_chunk(self.spec, self.robot_id, eid, steps[start : start + self.chunk_steps])
            self.seq += 1
            self.sink.put(self.robot_id, chunk.message(self.seq))

    def stats(self) -> WorkerStats:
        return {"robot_id": self.robot_id, "node_id": node_id(), "version": self.version,
                "rollouts": self.rollouts, "versions_used": list(self.versions_used), "seq": self.seq}

    def close(self) -> None:
        for env in self.envs:
            env.close()
        if self.sync is not None:
            self.sync.close()
