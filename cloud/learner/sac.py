"""Soft Actor-Critic learning core: pure tensors in, floats out (no I/O, no threads).

Speed notes (this runs on a CPU learner): the twin critics are one batched
ensemble module (one ``baddbmm`` per layer computes both Q heads), critic, actor
and temperature losses are summed into a single backward pass and stepped by a
single Adam, and the soft target update is one fused ``_foreach_lerp_``.  The
actor is trained against the critic *before* this step's critic update (as in
the original SAC paper's simultaneous update), which is what allows one backward.

Pixels (DrQ-v2 / SERL): with camera views in the config the actor is a
``cnn_gaussian`` whose conv encoder is shared with the critics. The critics
score ``cat[features, state, action]``; the critic loss trains the encoder,
while the actor and temperature losses see detached features (the encoder
learns from the critic only), and next-state features come from the same
encoder under ``no_grad``. Frames travel to the device as uint8, get a random
shift there, and the encoder converts them to float.

RLPD (Ball et al. 2023) is this core with ``critics`` > 2 (10), ``critic_layer_norm``
and a target that is the min over a random ``critic_subset`` (2) of the target
critics, drawn from the SAC's own generator; the actor then maximises the
ensemble's mean Q. The defaults (twin critics, no LayerNorm) draw nothing extra
and compute exactly what plain SAC did.

Keeping a warm start (:mod:`.bc_term`): ``critic_warmup_updates`` first steps
train the critics alone (the actor, and the robots' policy, stay as the
behaviour-cloning warm start left them, while the critics learn its values), and
``bc_weight`` adds a behaviour-cloning term on the batch's human rows to the
actor loss, decaying linearly to 0 over ``bc_decay_updates`` actor updates.
Both default to off, and off they change nothing: no extra computation, no
extra draw.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from shared.policy import CNNActor, GaussianActor, ImageEncoder, build_gaussian, cnn, mlp

from ..buffer.source import IMAGES, NEXT_IMAGES
from .augment import random_shift
from .bc_term import bc_regulariser, bc_weight_at, human_mask

log = logging.getLogger("fleetrl.sac")

@dataclass
class SACConfig:
    """Hyper-parameters; defaults tuned for FetchReachDense (50-step episodes)."""

    hidden: tuple[int, ...] = (256, 256)
    lr: float = 1e-3
    gamma: float = 0.98
    tau: float = 0.005
    batch_size: int = 256  # for the caller's sampler; update() takes whatever batch it is given
    init_alpha: float = 0.02
    target_entropy: float | None = None  # None -> -act_dim
    # Camera views the actor sees, each (field, (H, W, C)); empty: a state-only MLP actor.
    images: tuple[tuple[str, tuple[int, int, int]], ...] = ()
    encoder_channels: tuple[int, ...] = (32, 32, 32, 32)
    encoder_latent: int = 64
    augment_pad: int = 4  # random-shift pixels for camera frames (0: off)
    # RLPD (Ball et al. 2023): 10 critics, target = min over a random 2 of them, LayerNorm. Default: twin critics.
    critics: int = 2
    critic_subset: int = 2
    critic_layer_norm: bool = False
    # Keeping a behaviour-cloning warm start (module docstring). Default: off.
    critic_warmup_updates: int = 0
    bc_weight: float = 0.0
    bc_decay_updates: int = 0


def actor_arch(obs_dim: int, act_dim: int, cfg: SACConfig) -> dict[str, Any]:
    """The arch dict ``shared.policy.build_actor`` turns into this config's actor."""
    if not cfg.images:
        return mlp.arch(obs_dim, act_dim, cfg.hidden)
    return cnn.arch(obs_dim, act_dim, cfg.hidden, cfg.images, cfg.encoder_channels, cfg.encoder_latent)


class QEnsemble(nn.Module):
    """``n`` independent Q(s, a) MLPs evaluated together with batched matmuls.

    ``layer_norm``: each hidden layer normalised (per member, with its own gain and
    bias) before the ReLU, as RLPD's critics are: it keeps Q bounded on actions the
    demonstrations never took.
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...], n: int = 2, layer_norm: bool = False) -> None:
        super().__init__()
        dims = [in_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)  # same init as nn.Linear
            self.weights.append(nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound)))
        self.norm_gains = nn.ParameterList()
        self.norm_biases = nn.ParameterList()
        if layer_norm:
            for d in hidden:
                self.norm_gains.append(nn.Parameter(torch.ones(n, 1, d)))
                self.norm_biases.append(nn.Parameter(torch.zeros(n, 1, d)))
        self.n = n

    def forward(self, x: Tensor, detach_params: bool = False) -> Tensor:
        """Q values ``[n, B]`` for inputs ``[B, in_dim]``.

        ``detach_params`` lets the actor loss flow through the critic without
        touching the critic's gradients.
        """
        h = x.unsqueeze(0).expand(self.n, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if detach_params:
                w, b = w.detach(), b.detach()
            h = torch.baddbmm(b, h, w)
            if i < last:
                if len(self.norm_gains):
                    g, nb = self.norm_gains[i], self.norm_biases[i]
                    if detach_params:
                        g, nb = g.detach(), nb.detach()
                    h = torch.addcmul(nb, F.layer_norm(h, h.shape[-1:]), g)
                h = h.relu_()
        return h.squeeze(-1)


class SAC:
    """SAC with twin critics, Polyak targets and learned temperature; pixels through a shared encoder."""

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: SACConfig, device: str | torch.device = "cpu", seed: int = 0
    ) -> None:
        self.cfg = cfg
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.image_fields = tuple(name for name, _ in cfg.images)
        hidden = tuple(int(h) for h in cfg.hidden)
        # Seed network init without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)  # the CPU's only: networks are built there
            self.actor: GaussianActor = build_gaussian(actor_arch(obs_dim, act_dim, cfg)).to(self.device)
            # The pixel actor and its encoder, shared with the critics (None for a state-only actor).
            self._cnn: CNNActor | None = self.actor if isinstance(self.actor, CNNActor) else None
            self.encoder: ImageEncoder | None = self._cnn.encoder if self._cnn is not None else None
            feature_dim = self.encoder.feature_dim if self.encoder is not None else 0
            if cfg.bc_weight > 0 and cfg.images:
                raise ValueError("bc_weight: the behaviour-cloning term is for state policies (camera runs keep no "
                                 "demonstrations)")
            if not 1 <= cfg.critic_subset <= cfg.critics:
                raise ValueError(f"critic_subset ({cfg.critic_subset}) must be in 1..critics ({cfg.critics})")
            self.critic = QEnsemble(feature_dim + obs_dim + act_dim, hidden, cfg.critics,
                                    cfg.critic_layer_norm).to(self.device)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(
            math.log(cfg.init_alpha), device=self.device, requires_grad=True
        )
        self.target_entropy = (
            float(-act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        # Own noise stream (policy noise and augmentation): checkpoint/restore reproduces updates bit-for-bit.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.optim = torch.optim.Adam(
            [*self.actor.parameters(), *self.critic.parameters(), self.log_alpha],
            lr=cfg.lr,
            fused=True,
        )
        self._critic_params: list[torch.Tensor] = list(self.critic.parameters())
        self._target_params: list[torch.Tensor] = list(self.critic_target.parameters())
        self.updates = 0

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def _frames(self, batch: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
        """Camera frames of the batch on the device, still uint8, randomly shifted."""
        out: dict[str, Tensor] = {}
        for name in self.image_fields:
            frames = batch.get(prefix + name)
            if frames is None:
                raise ValueError(f"batch has no {prefix + name!r}: the actor sees camera {name!r}; "
                                 f"the batch holds {sorted(batch)}")
            frames = frames.to(self.device, non_blocking=True)
            out[name] = random_shift(frames, self.cfg.augment_pad, self.generator)
        return out

    def _sample(self, features: Tensor | None, obs: Tensor) -> tuple[Tensor, Tensor]:
        if features is None or self._cnn is None:
            return self.actor.sample(obs, self.generator)
        return self._cnn.sample_features(features, obs, self.generator)

    def _target_min(self, q: Tensor) -> Tensor:
        """Min over ``critic_subset`` members drawn at random (all of them when the subset is the ensemble)."""
        k = self.cfg.critic_subset
        if k < q.shape[0]:
            q = q[torch.randperm(q.shape[0], generator=self.generator, device=self.device)[:k]]
        return q.min(0).values

    @property
    def warming_up(self) -> bool:
        """Whether the next update trains the critics alone (``critic_warmup_updates``)."""
        return self.updates < self.cfg.critic_warmup_updates

    @property
    def bc_weight(self) -> float:
        """The behaviour-cloning term's weight in the next actor update."""
        actor_updates = max(0, self.updates - self.cfg.critic_warmup_updates)
        return bc_weight_at(self.cfg.bc_weight, self.cfg.bc_decay_updates, actor_updates)

    @staticmethod
    def _sa(features: Tensor | None, obs: Tensor, action: Tensor) -> Tensor:
        return torch.cat([obs, action] if features is None else [features, obs, action], -1)

    def losses(self, batch: Mapping[str, Tensor], actor: bool = True) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Critic, actor and temperature losses of one batch, graphs attached (draws noise from the generator).

        ``terminated`` marks true terminal states only: time-limit truncation must be
        0 here so the critic keeps bootstrapping through it. Only the critic loss
        reaches the encoder. ``actor`` False (a critic warm-up step): the actor and
        temperature losses are constant zeros and ``logp`` is the target's.
        """
        dev = self.device
        obs = batch["obs"].to(dev, torch.float32, non_blocking=True)
        action = batch["action"].to(dev, torch.float32, non_blocking=True)
        reward = batch["reward"].to(dev, torch.float32, non_blocking=True).reshape(-1)
        next_obs = batch["next_obs"].to(dev, torch.float32, non_blocking=True)
        not_done = 1.0 - batch["terminated"].to(dev, torch.float32, non_blocking=True).reshape(-1)
        gamma = self.cfg.gamma
        alpha = self.log_alpha.detach().exp()

        feat = next_feat = None
        if self.encoder is not None:
            images, next_images = self._frames(batch, IMAGES), self._frames(batch, NEXT_IMAGES)
            feat = self.encoder(images)  # the critic loss trains the encoder through these
            with torch.no_grad():
                next_feat = self.encoder(next_images)

        with torch.no_grad():
            next_a, next_logp = self._sample(next_feat, next_obs)
            q_next = self._target_min(self.critic_target(self._sa(next_feat, next_obs, next_a)))
            target = reward + gamma * not_done * (q_next - alpha * next_logp)

        q = self.critic(self._sa(feat, obs, action))  # [2, B]
        critic_loss = 0.5 * (q - target).pow(2).mean(1).sum()
        if not actor:
            zero = torch.zeros((), device=dev)
            return critic_loss, zero, zero, {"alpha": alpha, "logp": next_logp, "q": q}

        feat_d = None if feat is None else feat.detach()  # actor and alpha: no gradient into the encoder
        pi_a, logp = self._sample(feat_d, obs)
        q_all = self.critic(self._sa(feat_d, obs, pi_a), detach_params=True)
        # Twin critics: the min (SAC); an ensemble: the mean (RLPD, REDQ), its subset min is for the target only.
        q_pi = q_all.min(0).values if self.critic.n == 2 else q_all.mean(0)
        actor_loss = (alpha * logp - q_pi).mean()
        aux = {"alpha": alpha, "logp": logp, "q": q}
        bc_weight = self.bc_weight
        if bc_weight > 0:  # off: not computed at all, so the update is exactly SAC's
            aux["bc_loss"] = bc_regulariser(self.actor, obs, action, human_mask(batch, dev))
            actor_loss = actor_loss + bc_weight * aux["bc_loss"]

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        return critic_loss, actor_loss, alpha_loss, aux

    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One gradient step on critics, actor and alpha (and the encoder), then a soft target update.
        During a critic warm-up the actor and alpha get no gradient, so Adam leaves them as they are."""
        warm, bc_weight = self.warming_up, self.bc_weight
        critic_loss, actor_loss, alpha_loss, aux = self.losses(batch, actor=not warm)
        alpha, logp, q = aux["alpha"], aux["logp"], aux["q"]
        self.optim.zero_grad(set_to_none=True)
        (critic_loss if warm else critic_loss + actor_loss + alpha_loss).backward()
        self.optim.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.tau)
        self.updates += 1
        return {
            "critic_loss": critic_loss.item(),
            "actor_loss": actor_loss.item(),
            "alpha_loss": alpha_loss.item(),
            "alpha": alpha.item(),
            "entropy": -logp.detach().mean().item(),
            "q_mean": q.detach().mean().item(),
            **({"bc_loss": aux["bc_loss"].item(), "bc_weight": bc_weight} if "bc_loss" in aux else {}),
            **({"critic_warmup": 1.0} if warm else {}),
        }

    def actor_state(self) -> dict[str, Tensor]:
        """Detached CPU copies of the actor weights (encoder included), safe to hand to another thread."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.actor.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training exactly (nets, encoder, targets, optimizer, RNG)."""
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "cfg": asdict(self.cfg),
            "actor_arch": self.actor.arch(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "optim": self.optim.state_dict(),
            "generator": self.generator.get_state(),
            "generator_device": self.device.type,
            "seed": self.seed,
            "updates": self.updates,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this instance, devices need not.

        Tensors land on this SAC's device. The noise stream resumes exactly on the
        same kind of device; a CPU and a CUDA generator cannot take each other's
        state, so across kinds it is reseeded from the checkpoint (logged).
        """
        if (d["obs_dim"], d["act_dim"]) != (self.obs_dim, self.act_dim):
            raise ValueError(
                f"checkpoint dims (obs={d['obs_dim']}, act={d['act_dim']}) do not match "
                f"this SAC (obs={self.obs_dim}, act={self.act_dim})"
            )
        theirs = d.get("cfg", {})
        for key in ("critics", "critic_layer_norm"):
            mine, saved = getattr(self.cfg, key), theirs.get(key, getattr(SACConfig(), key))
            if saved != mine:
                raise ValueError(f"checkpoint has {key} = {saved}, this SAC {key} = {mine}")
        if "actor_arch" in d and _plain(d["actor_arch"]) != _plain(self.actor.arch()):
            raise ValueError(f"checkpoint policy arch {d['actor_arch']} does not match this SAC's {self.actor.arch()}")
        self.actor.load_state_dict(d["actor"])
        self.critic.load_state_dict(d["critic"])
        self.critic_target.load_state_dict(d["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(d["log_alpha"])
        self.optim.load_state_dict(d["optim"])
        saved_on = d.get("generator_device", "cpu")
        if saved_on == self.device.type:
            self.generator.set_state(d["generator"].cpu())
        else:
            reseed = int(d.get("seed", 0)) * 1_000_003 + int(d["updates"])
            self.generator.manual_seed(reseed)
            log.warning("event=sac_noise_reseeded checkpoint_device=%s device=%s seed=%d reason=generator state is "
                        "not portable across device kinds (updates continue, not bit-identical)",
                        saved_on, self.device.type, reseed)
        self.updates = int(d["updates"])


def _plain(x: Any) -> Any:
    """Tuples as lists, so an arch read back from JSON compares equal to a fresh one."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
