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
from shared.policy import Actor, actor_shapes, build_actor, param_count
from shared.weights import Weights

log = logging.getLogger("fleetrl.policy")

MAX_PARAMS = 200_000_000  # link.max_policy_params: twice bench/weights.py's largest (100M) policy
MAX_VERSION_JUMP = 1_000_000  # link.max_policy_version_jump: a learner publishes far fewer between two links


@dataclass(frozen=True)
class LoadedPolicy:
    version: int
    actor: Actor
    obs_fields: tuple[str, ...]


class PolicyHolder:
    def __init__(self, state_fields: dict[str, int], action_dim: int, max_params: int = MAX_PARAMS,
                 max_version_jump: int = MAX_VERSION_JUMP):
        self.state_fields = state_fields  # name -> flat size, for checking an update fits
        self.action_dim = action_dim
        self.max_params, self.max_version_jump = max_params, max_version_jump
        self.current: LoadedPolicy | None = None
        self.versions_used: list[int] = []
        self._lock = threading.Condition()
        self._interrupted = False

    @property
    def version(self) -> int:
        cur = self.current
        return cur.version if cur else 0

    def prepare(self, weights: Weights) -> LoadedPolicy:
        """Check, build and load the new network; raises WeightsError if it does not fit this robot.

        Everything that sizes memory (layer widths, depth, parameter count) is checked
        against the blob's own tensors before a network is built, and any failure past
        that point is still a WeightsError: a bad blob never takes the link down.
        """
        if weights.version > self.version + self.max_version_jump:
            raise WeightsError(f"policy version {weights.version} jumps more than {self.max_version_jump} past "
                               f"the current {self.version} (link.max_policy_version_jump)", code="version_jump")
        arch = weights.arch
        try:
            fields = tuple(str(f) for f in arch["obs_fields"])
            shapes = actor_shapes(arch["actor"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"weights carry an unusable architecture: {e}") from None
        n = param_count(shapes)
        if n > self.max_params:
            raise WeightsError(f"policy has {n} parameters, more than this robot's limit {self.max_params} "
                               f"(link.max_policy_params)", code="too_large")
        got = {k: tuple(v.shape) for k, v in weights.tensors.items()}
        if got != shapes:
            diff = sorted(set(got.items()) ^ set(shapes.items()))[:3]
            raise WeightsError(f"weights do not match the architecture they carry (first differences: {diff})")
        unknown = [f for f in fields if f not in self.state_fields]
        if unknown:
            raise WeightsError(f"policy reads fields this robot does not have: {unknown[:8]}")
        obs_dim = sum(self.state_fields[f] for f in fields)
        a_obs, a_act = arch["actor"]["obs_dim"], arch["actor"]["act_dim"]  # checked by actor_shapes
        if (a_obs, a_act) != (obs_dim, self.action_dim):
            raise WeightsError(f"policy shape {a_obs}->{a_act} does not fit this robot ({obs_dim}->{self.action_dim})")
        if not all(torch.isfinite(t).all() for t in weights.tensors.values()):
            raise WeightsError("weights contain NaN or inf")
        try:
            actor = build_actor(arch["actor"], self.max_params)
            actor.load_state_dict(weights.tensors, strict=True)
        except Exception as e:  # noqa: BLE001 - out of memory, dtype trouble: refuse, keep the old policy
            first_line = (str(e).splitlines() or [""])[0][:200]
            raise WeightsError(f"cannot load the policy: {type(e).__name__}: {first_line}") from None
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
