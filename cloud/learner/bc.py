"""Behaviour cloning: the Gaussian actor maximises the likelihood of the actions people took.

``bc`` trains on the demo ring (recorded and imported demonstrations, and
interventions); ``hg_dagger`` is the same update on the same rows, run while
the policy drives and people correct it (Kelly et al. 2019): each correction
lands in the demo ring and the next published policy has learned it. The
loss is the negative log-likelihood of the (normalised, tanh-space) action
under the actor's squashed Gaussian; the squash's Jacobian does not depend on
the weights and is left out. ``bc_loss`` also warm-starts SAC and RLPD
(``learner.bc_pretrain_updates``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import torch
from torch import Tensor

from shared.policy import GaussianActor, build_gaussian

from .sac import SACConfig, _plain, actor_arch

ACTION_CLAMP = 1.0 - 1e-4  # atanh of an action at the bound is infinite: clamp just inside it


def bc_loss(actor: GaussianActor, batch: Mapping[str, Tensor], device: torch.device) -> Tensor:
    """Mean negative log-likelihood of the batch's actions (in [-1, 1]) under ``actor`` (state actors)."""
    obs = batch["obs"].to(device, torch.float32, non_blocking=True)
    mean, log_std = actor(obs)
    return action_nll(mean, log_std, batch["action"].to(device, torch.float32, non_blocking=True))


def action_nll(mean: Tensor, log_std: Tensor, action: Tensor) -> Tensor:
    """Mean NLL of ``action`` (in [-1, 1]) under the pre-tanh Gaussian (mean, log_std): the loss of
    :func:`bc_loss`, for any actor's head (a camera actor's too)."""
    u = torch.atanh(action.clamp(-ACTION_CLAMP, ACTION_CLAMP))
    nll = 0.5 * ((u - mean) / log_std.exp()).pow(2) + log_std
    return nll.sum(-1).mean()


def check_fits(d: dict[str, Any], obs_dim: int, act_dim: int, arch: dict[str, Any]) -> None:
    """ValueError when a cloning checkpoint's dims or policy arch differ from this learner's (BC, flow SFT), or
    when it trained LoRA adapters (``cloud.learner.lora`` strips its own entry before it gets here)."""
    if d.get("lora") is not None:
        raise ValueError(f"the checkpoint trained LoRA adapters {d['lora']}; this run trains every weight "
                         '(learner.finetune = "full")')
    if (d["obs_dim"], d["act_dim"]) != (obs_dim, act_dim):
        raise ValueError(f"checkpoint dims (obs={d['obs_dim']}, act={d['act_dim']}) do not match "
                         f"this learner (obs={obs_dim}, act={act_dim})")
    if _plain(d["actor_arch"]) != _plain(arch):
        raise ValueError(f"checkpoint policy arch {d['actor_arch']} does not match this learner's {arch}")


class BC:
    """Behaviour cloning of the actor SAC would publish (same arch), one Adam step per batch."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig, device: str | torch.device = "cpu",
                 seed: int = 0, name: str = "bc") -> None:
        if cfg.images:
            raise ValueError("behaviour cloning trains state actors only (camera runs keep no demonstrations)")
        self.name, self.cfg = name, cfg
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.image_fields: tuple[str, ...] = ()
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            self.actor: GaussianActor = build_gaussian(actor_arch(obs_dim, act_dim, cfg)).to(self.device)
        self.optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.updates = 0

    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        loss = bc_loss(self.actor, batch, self.device)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.updates += 1
        with torch.no_grad():
            err = (self.actor.act(batch["obs"].to(self.device, torch.float32), deterministic=True)
                   - batch["action"].to(self.device, torch.float32)).pow(2).sum(-1).mean()
        return {"bc_loss": loss.item(), "action_mse": err.item()}

    def actor_state(self) -> dict[str, Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.actor.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "cfg": asdict(self.cfg),
                "actor_arch": self.actor.arch(), "actor": self.actor.state_dict(),
                "optim": self.optim.state_dict(), "seed": self.seed, "updates": self.updates}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; ValueError when the dims or the actor's arch differ."""
        check_fits(d, self.obs_dim, self.act_dim, self.actor.arch())
        self.actor.load_state_dict(d["actor"])
        self.optim.load_state_dict(d["optim"])
        self.updates = int(d["updates"])
