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
from typing import Any, Protocol

import numpy as np
import torch

import hal_drivers
from hal_drivers.base import Robot
from edge_agent.policy_holder import PolicyHolder
from shared.chunk import StepRecord, build_batch, checksum, encode_chunk
from shared.protocol import Chunk
from shared.weights import WeightsBlob, decode_weights

from .config import RolloutPlacement, WeightSyncConfig
from .shard import node_id
from .weight_sync import WeightSync

log = logging.getLogger("fleetrl.cluster.rollout")

MAX_WEIGHTS = 1 << 31


class Sink(Protocol):
    def hello(self, robot_id: str, spec: dict[str, Any], source: str) -> int: ...
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
        self.low, self.high = np.asarray(desc.action_low, np.float32), np.asarray(desc.action_high, np.float32)
        self.holder = PolicyHolder({k: int(np.prod(v.shape)) for k, v in desc.observation.items() if not v.is_image},
                                   self.spec.action_dim)
        self.seq = sink.hello(self.robot_id, self.spec.to_dict(), "sim")  # resume after the durable mark
        self.rng = np.random.default_rng(seed + index)
        self.sync: WeightSync | None = None
        self.rollouts = 0
        self.versions_used: list[int] = []

    # -- weights, between rollouts ------------------------------------------

    def set_weights(self, blob: WeightsBlob | None) -> int:
        if blob is not None and blob.version > self.holder.version:
            self.holder.swap(self.holder.prepare(decode_weights(blob.data, blob.sha256, MAX_WEIGHTS)))
        return self.holder.version

    def init_sync(self, init_method: str, rank: int, world_size: int, cfg: dict[str, Any]) -> str:
        self.sync = WeightSync(rank, world_size, init_method, WeightSyncConfig(**cfg))
        return self.sync.backend

    def sync_round(self) -> int:
        assert self.sync is not None, "init_sync first"
        return self.set_weights(self.sync.sync())

    # -- rollouts -------------------------------------------------------------

    def _actions(self, obs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, int]:
        cur = self.holder.current
        if cur is None:
            return self.rng.uniform(self.low, self.high, (len(obs), len(self.low))).astype(np.float32), 0
        x = np.stack([np.concatenate([np.asarray(o[f], np.float32).ravel() for f in cur.obs_fields]) for o in obs])
        with torch.inference_mode():
            a = cur.actor.act(torch.from_numpy(x)).numpy()
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low), cur.version

    def rollout(self) -> dict[str, Any]:
        """Run ``episodes_per_rollout`` episodes on every env with one policy; store them."""
        version = self.holder.version
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
            batch = build_batch(self.spec, self.robot_id, eid, steps[start : start + self.chunk_steps])
            body = encode_chunk(batch)
            self.seq += 1
            self.sink.put(self.robot_id, Chunk(self.seq, eid, batch.num_rows, batch.nbytes, checksum(body), body))

    def stats(self) -> dict[str, Any]:
        return {"robot_id": self.robot_id, "node_id": node_id(), "version": self.holder.version,
                "rollouts": self.rollouts, "versions_used": list(self.versions_used), "seq": self.seq}

    def close(self) -> None:
        for env in self.envs:
            env.close()
        if self.sync is not None:
            self.sync.close()
