"""Where training starts and what it trains: ``learner.init_policy`` and ``learner.finetune``.

Without ``init_policy`` a run starts from fresh random weights. With it, the
actor starts as a pretrained policy: a local weights file in the format robots
load (:mod:`shared.weights`, an ``arch`` with ``actor`` and ``obs_fields``),
such as a policy an earlier run published. Nothing is downloaded. The file
must be this run's policy exactly: its arch (kind, dims, ``hidden``,
``flow_horizon``, ``flow_steps``) and observation fields; anything else is a
ConfigError naming ``learner.init_policy`` and the setting that differs.
What the config alone decides is checked when the learner starts, before any
data; the dims and fields once the buffer knows them. Tensors a published
blob carries beside the actor (a success classifier) are left out.

Published policies read raw observations (a run's normaliser is folded into
their first layer). With ``normalize_observations`` the learner fits its own
statistics as usual and rewrites the pretrained first layer for normalised
inputs (``ObsNormalizer.unfold``, the exact inverse of publishing's fold), so
training starts from exactly the pretrained policy's function of raw
observations, and what it publishes folds back the same way.

A checkpoint (``--resume``) and a published policy newer than it take
precedence over ``init_policy`` (the trainer restores them afterwards).
``finetune = "lora"`` then wraps the actor's Linear layers in adapters
(:mod:`.lora`); ``full`` trains every weight.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError, WeightsError
from shared.policy import PolicyActor, build_actor, check_arch
from shared.success_classifier import PREFIX as CLASSIFIER_PREFIX
from shared.weights import Weights, all_finite, load_weights_file

from . import checkpoint
from .algorithms import Algorithm
from .normalize import ObsNormalizer

log = logging.getLogger("fleetrl.finetune")

MAX_INIT_BYTES = 1 << 40  # the learner's own file: no robot-sized limit
# Which setting decides each arch field, for the message when a pretrained policy does not fit.
SETTING = {"kind": "learner.policy", "version": "the policy format version", "hidden": "learner.hidden",
           "horizon": "learner.flow_horizon", "steps": "learner.flow_steps",
           "obs_dim": "the state fields: the robots' and learner.observation_fields",
           "act_dim": "the robots' action size"}


def _what(cfg: LearnerAlgoConfig) -> str:
    return f"learner.init_policy = {str(cfg.init_policy)!r}"


def read_init_policy(cfg: LearnerAlgoConfig) -> Weights:
    """The pretrained policy file, decoded and its actor arch checked; ConfigError naming the key otherwise."""
    path = Path(str(cfg.init_policy))
    if not path.is_file():
        raise ConfigError(f"{_what(cfg)}: no such file (a pretrained policy is read from a local weights file; "
                          "nothing is downloaded)")
    try:
        weights = load_weights_file(path, None, MAX_INIT_BYTES)
        actor = weights.arch.get("actor")
        check_arch(actor)  # type: ignore[arg-type]  # a ValueError naming the field if it is not an arch
    except (WeightsError, ValueError) as e:
        raise ConfigError(f"{_what(cfg)}: not a policy weights file this build loads ({e})") from None
    fields = weights.arch.get("obs_fields")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise ConfigError(f"{_what(cfg)}: its arch has no obs_fields list (the state fields the policy reads)")
    return weights


def _differences(theirs: dict[str, Any], ours: dict[str, Any], keys: list[str]) -> list[str]:
    return [f"{k}: file {theirs.get(k)!r}, this run {ours.get(k)!r} (set by {SETTING.get(k, 'the policy arch')})"
            for k in keys if theirs.get(k) != ours.get(k)]


def _refuse(cfg: LearnerAlgoConfig, diff: list[str]) -> None:
    if diff:
        raise ConfigError(f"{_what(cfg)} does not fit this run's policy: " + "; ".join(diff))


def configured_arch(cfg: LearnerAlgoConfig) -> dict[str, Any]:
    """The arch fields the config alone decides (the dims come with the data)."""
    out: dict[str, Any] = {"kind": cfg.policy_kind, "hidden": list(cfg.hidden)}
    if cfg.policy_kind == "flow":
        out.update(horizon=cfg.flow_horizon, steps=cfg.flow_steps)
    return out


def check_files(cfg: LearnerAlgoConfig) -> None:
    """At start, before any data: ``encoder_weights`` and ``init_policy`` exist, and the pretrained policy is
    this run's kind, widths and chunking (and names the layers ``lora_targets`` picks). ConfigError otherwise."""
    if cfg.encoder_weights is not None:
        checkpoint.check_encoder_weights_file(Path(cfg.encoder_weights))
    if cfg.init_policy is None:
        return
    arch = read_init_policy(cfg).arch["actor"]
    ours = configured_arch(cfg)
    _refuse(cfg, _differences(arch, ours, list(ours)))
    if cfg.finetune == "lora":
        from .lora import target_layers  # no peft import: the names come from the plain module

        with torch.device("meta"):  # names only: no memory
            target_layers(build_actor(arch), cfg.lora_targets)


def load_init_policy(actor: PolicyActor, cfg: LearnerAlgoConfig, obs_fields: list[str],
                     norm: ObsNormalizer | None) -> int:
    """Load ``init_policy`` into ``actor`` (a fresh one, before any adapters); the tensor count."""
    weights = read_init_policy(cfg)
    ours = json.loads(json.dumps(actor.arch()))
    theirs = weights.arch["actor"]
    _refuse(cfg, _differences(theirs, ours, sorted(set(theirs) | set(ours))))
    if weights.arch["obs_fields"] != list(obs_fields):
        raise ConfigError(f"{_what(cfg)} reads observation fields {weights.arch['obs_fields']}, this run's are "
                          f"{list(obs_fields)} (learner.observation_fields and the robots' state fields decide them)")
    tensors = {k: v for k, v in weights.tensors.items() if not k.startswith(CLASSIFIER_PREFIX)}
    if not all_finite(tensors):
        raise ConfigError(f"{_what(cfg)} holds NaN or infinite weights")
    if norm is not None:  # published weights read raw observations: rewrite the first layer for normalised ones
        tensors = norm.unfold({k: v.to(torch.float32) for k, v in tensors.items()})
    try:
        with torch.no_grad():
            actor.load_state_dict(tensors)
    except RuntimeError as e:  # the arch matched: tensors that do not fit it are a broken file
        raise ConfigError(f"{_what(cfg)}: its tensors do not match the arch it carries ({str(e)[:300]})") from None
    return len(tensors)


def prepare(algo: Algorithm, cfg: LearnerAlgoConfig, obs_fields: list[str], norm: ObsNormalizer | None) -> Algorithm:
    """The learner as configured: ``init_policy`` loaded into its actor, then LoRA adapters when asked for."""
    if cfg.init_policy is not None:
        n = load_init_policy(algo.actor, cfg, obs_fields, norm)
        log.info("event=init_policy_loaded path=%s tensors=%d normalised_inputs=%s", cfg.init_policy, n,
                 norm is not None)
    if cfg.finetune == "lora":
        from .bc import BC
        from .flow_sft import FlowSFT
        from .lora import LoRA

        if not isinstance(algo, (BC, FlowSFT)):  # the config refuses it too; a learner built in code must as well
            raise ConfigError(f'learner.finetune = "lora" adapts a supervised learner (algorithm = "bc" or '
                              f'"hg_dagger"), not {type(algo).__name__}')
        algo = LoRA(algo, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed)
    trainable = sum(p.numel() for p in algo.actor.parameters() if p.requires_grad)
    total = sum(p.numel() for p in algo.actor.parameters())
    log.info("event=finetune mode=%s init_policy=%s trainable_params=%d actor_params=%d", cfg.finetune,
             cfg.init_policy or "none", trainable, total)
    return algo


def load_actor(algo: Algorithm, tensors: dict[str, torch.Tensor]) -> None:
    """Plain actor tensors (a published policy) into the learner's actor; with LoRA into its frozen base
    weights, the adapters reset to zero, so the learner computes exactly that policy."""
    load = getattr(algo, "load_actor", None)
    with torch.no_grad():
        if load is not None:
            load(tensors)
        else:
            algo.actor.load_state_dict(tensors)
