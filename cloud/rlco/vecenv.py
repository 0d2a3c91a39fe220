"""N simulated robots stepped together: the sim side of RL-Co, in this process.

Each env is a driver ``Robot`` (the same class an edge-agent drives, so observations are the
fields robots record), stepped one after the other and auto-reset when an episode ends. On the
shared 2-core machines, 8 FetchPush envs, zero actions (docs/rlco.md): this loop 165 steps/s,
gymnasium's ``SyncVectorEnv`` 171, ``AsyncVectorEnv`` (a subprocess per env) 107: with two
cores the pipes and process switches cost more than the parallelism gives, so envs are stepped
here and the policy's forward pass is batched over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from hal_drivers.base import Robot
from shared.observations import flatten


@dataclass
class Step:
    """One step of every env; ``next_obs`` is where each env's step led (its final state when it ended),
    ``obs`` is what the policy sees next (a new episode's first observation where one ended)."""

    obs: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray  # of the episodes that ended at this step (False elsewhere)


class VecEnv:
    """``len(seeds)`` robots from ``make(seed)``; observations flattened over ``fields`` in order."""

    def __init__(self, make: Callable[[int], Robot], seeds: Sequence[int], fields: Sequence[str]):
        if not seeds:
            raise ValueError("VecEnv needs at least one env")
        self.fields = tuple(fields)
        self.robots: list[Robot] = []
        try:
            for s in seeds:
                self.robots.append(make(int(s)))
        except BaseException:
            self.close()
            raise
        self.obs = np.stack([flatten(r.reset(), self.fields) for r in self.robots])
        self.episodes = 0
        self.successes = 0

    @property
    def n(self) -> int:
        return len(self.robots)

    def step(self, actions: np.ndarray) -> Step:
        n = self.n
        nxt = np.empty_like(self.obs)
        obs = np.empty_like(self.obs)
        rew, term, trunc, succ = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        for i, robot in enumerate(self.robots):
            res = robot.step(np.asarray(actions[i], np.float32))
            nxt[i] = flatten(res.observation, self.fields)
            rew[i], term[i], trunc[i] = res.reward, res.terminated, res.truncated
            if res.terminated or res.truncated:
                succ[i] = res.success
                self.episodes += 1
                self.successes += int(res.success)
                obs[i] = flatten(robot.reset(), self.fields)
            else:
                obs[i] = nxt[i]
        self.obs = obs
        return Step(obs, nxt, rew, term, trunc, succ)

    def close(self) -> None:
        for r in self.robots:
            r.close()
        self.robots = []
