"""The robot's current policy, swapped atomically between two control ticks.

Weights are verified and loaded into a fresh network off the control thread;
the swap itself is one reference assignment, so a tick sees the old policy or
the new one, never a half-loaded one. A bad update is refused and the old
policy keeps running.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch

from shared.errors import WeightsError
from shared.policy import Actor, build_actor
from shared.weights import Weights

log = logging.getLogger("fleetrl.policy")


@dataclass(frozen=True)
class LoadedPolicy:
    version: int
    actor: Actor
    obs_fields: tuple[str, ...]


class PolicyHolder:
    def __init__(self, state_fields: dict[str, int], action_dim: int):
        self.state_fields = state_fields  # name -> flat size, for checking an update fits
        self.action_dim = action_dim
        self.current: LoadedPolicy | None = None
        self.versions_used: list[int] = []
        self._lock = threading.Condition()
        self._interrupted = False

    @property
    def version(self) -> int:
        cur = self.current
        return cur.version if cur else 0

    def prepare(self, weights: Weights) -> LoadedPolicy:
        """Build and load the new network; raises WeightsError if it does not fit this robot."""
        arch = weights.arch
        try:
            fields = tuple(str(f) for f in arch["obs_fields"])
            actor = build_actor(arch["actor"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"weights carry an unusable architecture: {e}") from None
        unknown = [f for f in fields if f not in self.state_fields]
        if unknown:
            raise WeightsError(f"policy reads fields this robot does not have: {unknown}")
        obs_dim = sum(self.state_fields[f] for f in fields)
        if actor.arch().get("obs_dim") != obs_dim or actor.arch().get("act_dim") != self.action_dim:
            raise WeightsError(
                f"policy shape {actor.arch().get('obs_dim')}->{actor.arch().get('act_dim')} "
                f"does not fit this robot ({obs_dim}->{self.action_dim})"
            )
        try:
            actor.load_state_dict(weights.tensors, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"weights do not match the architecture: {str(e).splitlines()[0]}") from None
        if not all(torch.isfinite(t).all() for t in weights.tensors.values()):
            raise WeightsError("weights contain NaN or inf")
        actor.eval()
        return LoadedPolicy(weights.version, actor, fields)

    def swap(self, policy: LoadedPolicy) -> bool:
        with self._lock:
            if policy.version <= self.version:
                return False
            self.current = policy
            self.versions_used.append(policy.version)
            self._lock.notify_all()
        return True

    def wait_newer(self, than: int, timeout: float) -> bool:
        """Block until a policy newer than ``than`` is in place (synchronous mode), or interrupted."""
        with self._lock:
            return self._lock.wait_for(lambda: self.version > than or self._interrupted, timeout)

    def interrupt(self) -> None:
        """Wake any wait_newer for good (the agent is stopping)."""
        with self._lock:
            self._interrupted = True
            self._lock.notify_all()

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> tuple[np.ndarray, int] | None:
        """The policy's action in [-1, 1] and the version that chose it; None before any policy."""
        cur = self.current  # one read: the whole tick uses one policy
        if cur is None:
            return None
        x = np.concatenate([np.asarray(obs[f], np.float32).ravel() for f in cur.obs_fields])
        with torch.inference_mode():
            a = cur.actor.act(torch.from_numpy(x)[None], deterministic=deterministic)[0].numpy()
        return a, cur.version
