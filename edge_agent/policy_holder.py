"""The robot's current policy, swapped atomically between two control ticks.

Weights are verified and loaded into a fresh network off the control thread;
the swap itself is one reference assignment, so a tick sees the old policy or
the new one, never a half-loaded one. A bad update is refused and the old
policy keeps running.
"""

from __future__ import annotations

import logging
import threading
from typing import Mapping

import numpy as np
import torch

from shared.errors import WeightsError
from shared.observations import ImageShape
from shared.policy_runner import LoadedPolicy, load_policy
from shared.weights import Weights

log = logging.getLogger("fleetrl.policy")

MAX_PARAMS = 200_000_000  # link.max_policy_params: twice bench/weights.py's largest (100M) policy
MAX_VERSION_JUMP = 1_000_000  # link.max_policy_version_jump: a learner publishes far fewer between two links

__all__ = ["LoadedPolicy", "PolicyHolder", "MAX_PARAMS", "MAX_VERSION_JUMP"]


class PolicyHolder:
    def __init__(self, state_fields: dict[str, int], action_dim: int, max_params: int = MAX_PARAMS,
                 max_version_jump: int = MAX_VERSION_JUMP, image_fields: Mapping[str, ImageShape] | None = None,
                 device: torch.device = torch.device("cpu")):
        self.state_fields = state_fields  # name -> flat size, for checking an update fits
        self.image_fields = dict(image_fields or {})  # camera name -> (H, W, C): what a pixel policy may read
        self.device = device  # where policies run (control.policy_device)
        self.action_dim = action_dim
        self.max_params, self.max_version_jump = max_params, max_version_jump
        self.current: LoadedPolicy | None = None
        self.announced = 0  # the newest version a learner's welcome named: what a fresh agent expects
        self.versions_used: list[int] = []
        self._lock = threading.Condition()
        self._interrupted = False

    @property
    def version(self) -> int:
        cur = self.current
        return cur.version if cur else 0

    def prepare(self, weights: Weights) -> LoadedPolicy:
        """Check, build and load the new network; raises WeightsError if it does not fit this robot.

        The version limit is the robot's own (link.max_policy_version_jump); the
        rest is :func:`shared.policy_runner.load_policy`, which sizes everything
        against the blob's own tensors before building a network.
        """
        base = max(self.version, self.announced)  # a restarted agent holds v0 while the learner is far ahead
        if weights.version > base + self.max_version_jump:
            raise WeightsError(f"policy version {weights.version} jumps more than {self.max_version_jump} past "
                               f"{base}, the newest this robot holds or its learner announced "
                               "(link.max_policy_version_jump)", code="version_jump")
        return load_policy(weights, self.state_fields, self.action_dim, self.max_params,
                           image_fields=self.image_fields, device=self.device)

    def learner_announced(self, version: int) -> None:
        """The welcome of an authenticated link named the learner's current version."""
        self.announced = max(self.announced, version)

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

    def act(self, obs: dict[str, np.ndarray], deterministic: bool,
            pinned: LoadedPolicy | None = None) -> tuple[np.ndarray, int] | None:
        """The policy's action in [-1, 1] and the version that chose it; None before any policy.

        ``pinned`` (synchronous mode: the policy an episode started with) acts instead of the
        current one, so a version published mid-episode waits for the next episode."""
        cur = pinned or self.current  # one read: the whole tick uses one policy
        if cur is None:
            return None
        return cur.act(obs, deterministic), cur.version

    def success(self, obs: dict[str, np.ndarray], pinned: LoadedPolicy | None = None) -> bool | None:
        """Whether the current policy's success classifier sees a success in ``obs``; None without one.

        A learner with ``reward = "classifier"`` ships its classifier with the policy, so a robot
        can end an episode as soon as the classifier sees the task done."""
        cur = pinned or self.current  # one read, as in act
        return cur.success(obs) if cur is not None else None

