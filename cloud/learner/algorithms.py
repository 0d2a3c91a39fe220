"""Which learner ``learner.algorithm`` names, and what each one samples.

``sac``: SAC over the online ring. ``rlpd``: the same SAC core over batches
with ``demo_fraction`` from the demo ring (symmetric sampling; the critic
ensemble, LayerNorm and update-to-data ratio come from the config's
``critics``, ``critic_subset``, ``critic_layer_norm`` and ``utd_ratio``; a
warm start is kept by ``bc_weight`` and ``critic_warmup_updates``, :mod:`.bc_term`).
``bc`` and ``hg_dagger``: behaviour cloning on the demo ring only; with
``policy = "flow"`` the same rows train the flow policy by supervised flow
matching on their action chunks (:mod:`.flow_sft`). Every
algorithm has the same face to the trainer (:class:`Algorithm`) and resumes
from its ``state_dict`` exactly.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from torch import Tensor

from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError
from shared.policy import GaussianActor, PolicyActor

from ..buffer import Dims, SampleSource
from ..buffer.demos import MixedSource
from .bc import BC, bc_loss
from .flow_sft import FlowSFT
from .sac import SAC, SACConfig

log = logging.getLogger("fleetrl.algorithms")

DEMO_ALGORITHMS = ("rlpd", "bc", "hg_dagger")
CLONING = ("bc", "hg_dagger")  # train on the demo ring only


class Algorithm(Protocol):
    @property
    def actor(self) -> PolicyActor: ...  # read-only: SAC and BC hold a GaussianActor, FlowSFT a FlowActor
    device: torch.device
    image_fields: tuple[str, ...]
    updates: int

    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]: ...
    def actor_state(self) -> dict[str, Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, d: dict[str, Any]) -> None: ...


def needs_demos(cfg: LearnerAlgoConfig) -> bool:
    return cfg.algorithm in DEMO_ALGORITHMS or cfg.bc_pretrain_updates > 0


def check_source(cfg: LearnerAlgoConfig, buffer: SampleSource, dims: Dims | None) -> None:
    """ConfigError when the algorithm needs demonstrations the buffer cannot keep (camera runs, the cluster)."""
    if not needs_demos(cfg):
        return
    what = (f'learner.algorithm = "{cfg.algorithm}"' if cfg.algorithm in DEMO_ALGORITHMS
            else f"learner.bc_pretrain_updates = {cfg.bc_pretrain_updates}")
    if cfg.image_fields or (dims is not None and dims.images):
        raise ConfigError(f"{what} needs demonstrations, which this build keeps for state-only runs: this run "
                          f"serves camera fields {list(cfg.image_fields) or list(dims.image_fields if dims else [])}; "
                          'use algorithm = "sac" (and bc_pretrain_updates = 0) with cameras')
    if not hasattr(buffer, "demo_size"):
        raise ConfigError(f"{what} needs a replay buffer with a demo ring (the single-node learner's); "
                          f"{type(buffer).__name__} has none")


def source_for(cfg: LearnerAlgoConfig, buffer: SampleSource) -> SampleSource:
    """What the algorithm samples: the buffer (sac), the mixed batch (rlpd), the demo ring alone (bc, hg_dagger)."""
    if cfg.algorithm == "rlpd":
        return MixedSource(buffer, cfg.demo_fraction)  # type: ignore[arg-type]  # check_source made sure
    if cfg.algorithm in CLONING:
        return MixedSource(buffer, 1.0)  # type: ignore[arg-type]
    return buffer


def build(cfg: LearnerAlgoConfig, dims: Dims, sac_cfg: SACConfig, device: torch.device) -> Algorithm:
    if cfg.policy_kind == "flow":
        if cfg.algorithm not in CLONING:  # the config refuses it too; a learner built in code must as well
            raise ConfigError(f'learner.policy = "flow" trains with algorithm = "bc" or "hg_dagger", '
                              f'not "{cfg.algorithm}"')
        return FlowSFT(dims.obs_dim, dims.act_dim, horizon=cfg.flow_horizon, steps=cfg.flow_steps,
                       hidden=tuple(cfg.hidden), lr=cfg.lr, device=device, seed=cfg.seed, name=cfg.algorithm)
    if cfg.algorithm in CLONING:
        return BC(dims.obs_dim, dims.act_dim, sac_cfg, device=device, seed=cfg.seed, name=cfg.algorithm)
    return SAC(dims.obs_dim, dims.act_dim, sac_cfg, device=device, seed=cfg.seed)


def pretrain(algo: Algorithm, source: SampleSource, cfg: LearnerAlgoConfig, rng: np.random.Generator,
             transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
             beat: Callable[[], None] = lambda: None) -> int:
    """``bc_pretrain_updates`` behaviour-cloning steps of the actor on the demo ring (its own Adam); steps done.
    ``beat`` is called after each (the trainer's heartbeat: a long warm start is progress, not a hang)."""
    steps = cfg.bc_pretrain_updates
    actor = algo.actor
    if steps > 0 and not isinstance(actor, GaussianActor):
        raise ConfigError(f"learner.bc_pretrain_updates = {steps} warm-starts a Gaussian actor; this run trains "
                          f"{actor.arch()['kind']}: set bc_pretrain_updates = 0")
    demos = MixedSource(source, 1.0)  # type: ignore[arg-type]
    if steps <= 0 or demos.size <= 0:
        if steps > 0:
            log.warning("event=bc_pretrain_skipped reason=demo ring is empty updates=%d", steps)
        return 0
    assert isinstance(actor, GaussianActor)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    loss = torch.zeros(())
    for _ in range(steps):
        batch = {k: torch.from_numpy(v) for k, v in demos.sample(cfg.batch_size, rng).items()}
        if transform is not None:
            batch = transform(batch)
        loss = bc_loss(actor, batch, algo.device)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        beat()
    log.info("event=bc_pretrained updates=%d demo_rows=%d final_loss=%.4f", steps, demos.size, loss.item())
    return steps
