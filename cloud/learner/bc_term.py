"""The behaviour-cloning term SAC and RLPD add to the actor loss (``learner.bc_weight``).

Right after a behaviour-cloning warm start the critics know nothing yet, and
the actor's first RL steps follow their random gradients off the
demonstrated actions: the warm start is lost before the critics could have
used it. Cloning the rows people drove (recorded demonstrations, and
interventions, wherever they sit in the batch) inside every actor update
keeps the policy near them while the critics learn (TD3+BC, Fujimoto & Gu
2021; the demo-BC term of Nair et al. 2018), with a weight that may decay to
0 once the critics can be trusted (``learner.bc_decay_updates``).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from shared.policy import GaussianActor

FLAGS = ("demo", "intervention")  # the batch columns marking rows a person drove


def human_mask(batch: Mapping[str, Tensor], device: torch.device) -> Tensor:
    """1.0 on the batch's rows a person drove (``demo`` or ``intervention`` set), else 0.0; shape ``[B]``."""
    flags = [batch[k] for k in FLAGS if k in batch]
    if not flags:
        raise ValueError(f"a behaviour-cloning term needs the batch's {'/'.join(FLAGS)} flags; it holds "
                         f"{sorted(batch)}")
    mask = flags[0].to(device, torch.float32).reshape(-1)
    for f in flags[1:]:
        mask = torch.maximum(mask, f.to(device, torch.float32).reshape(-1))
    return mask


def bc_regulariser(actor: GaussianActor, obs: Tensor, action: Tensor, mask: Tensor) -> Tensor:
    """Mean, over the rows where ``mask`` is 1, of the squared distance between the policy's mean action
    (tanh of its Gaussian mean, in [-1, 1]) and the action the person took; 0 when no row is masked.

    The squared error pulls the mean action, the one robots evaluate and the task is judged on, and
    leaves the policy's spread to SAC's entropy term (a likelihood would also shrink the standard
    deviation and fight the temperature).
    """
    mean, _ = actor(obs)
    err = (torch.tanh(mean) - action).pow(2).sum(-1)
    return (err * mask).sum() / mask.sum().clamp(min=1.0)


def bc_weight_at(weight: float, decay_updates: int, actor_updates: int) -> float:
    """The term's weight after ``actor_updates`` actor updates: ``weight``, falling linearly to 0 over
    ``decay_updates`` of them (0: constant)."""
    if weight <= 0.0 or decay_updates <= 0:
        return max(weight, 0.0)
    return weight * max(0.0, 1.0 - actor_updates / decay_updates)
