"""LoRA fine-tuning (``learner.finetune = "lora"``) of a supervised learner, through ``peft``.

peft's support for custom models wraps the chosen ``nn.Linear`` layers of the
actor in place (``inject_adapter_in_model`` on the plain module: no model
name, no hub, nothing fetched). Each then computes ``W x + b + s B A x`` with
``s = lora_alpha / lora_rank``: ``W`` and ``b`` stay frozen, and only ``A``
(rank x in, random) and ``B`` (out x rank, zero, so training starts from the
pretrained policy) are trained, by an Adam over the adapters alone: its state
is two moments per adapter weight, not per base weight.

Robots never see adapters. :meth:`LoRA.actor_state` merges ``W + s B @ A``
into fresh tensors named as in the plain arch, so a robot loads an ordinary
policy without peft, and the training copy is not touched. The checkpoint
holds base weights, adapters, optimizer and the learner's generator, so a
resumed run continues exactly. The learner is the BC or flow-SFT learner it
wraps, with the same face to the trainer.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from shared.errors import ConfigError
from shared.policy import PolicyActor

from .bc import BC
from .flow_sft import FlowSFT

log = logging.getLogger("fleetrl.lora")

ADAPTER = "default"  # peft's adapter name: one adapter per layer
INIT_SEED_OFFSET = 3  # adapters are initialised from the run's seed (not the process's global stream)


def target_layers(actor: nn.Module, targets: Sequence[str] | None) -> list[str]:
    """Names of the actor's Linear layers ``learner.lora_targets`` picks (a name or a prefix of names; None: all),
    in the actor's order; ConfigError naming the key for a target that picks none."""
    linear = [name for name, m in actor.named_modules() if isinstance(m, nn.Linear)]
    if targets is None:
        return linear
    unknown = [t for t in targets if not any(n == t or n.startswith(t + ".") for n in linear)]
    if unknown:
        raise ConfigError(f"learner.lora_targets names {unknown}, which are no Linear layers of this policy (its "
                          f"Linear layers: {linear}; a prefix such as {linear[0].split('.')[0]!r} picks all under it)")
    return [n for n in linear if any(n == t or n.startswith(t + ".") for t in targets)]


def lora_layers(actor: nn.Module) -> dict[str, Any]:
    """The actor's adapter-wrapped Linear layers by name (peft's ``lora.Linear``: ``base_layer``, ``lora_A/B``)."""
    return {name: m for name, m in actor.named_modules()
            if isinstance(getattr(m, "base_layer", None), nn.Linear) and hasattr(m, "lora_A")}


def merged_state(actor: nn.Module) -> dict[str, Tensor]:
    """The actor's tensors in its plain arch, each adapter merged (``W + s B @ A``), as new CPU tensors."""
    layers = lora_layers(actor)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for key, value in actor.state_dict().items():
            if not any(key.startswith(name + ".") for name in layers):
                out[key] = value.detach().to("cpu", copy=True)
        for name, layer in layers.items():
            base = layer.base_layer
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            out[name + ".weight"] = (base.weight + layer.scaling[ADAPTER] * (b @ a)).to("cpu", copy=True)
            if base.bias is not None:
                out[name + ".bias"] = base.bias.detach().to("cpu", copy=True)
    return out


class LoRA:
    """A BC or flow-SFT learner whose actor trains through LoRA adapters only; same face to the trainer."""

    def __init__(self, inner: BC | FlowSFT, rank: int, alpha: int, targets: Sequence[str] | None = None,
                 seed: int = 0) -> None:
        from peft import LoraConfig, inject_adapter_in_model  # optional: the config refuses lora without it

        self.inner = inner
        self.name = inner.name
        self.device, self.image_fields = inner.device, inner.image_fields
        self.layers = target_layers(inner.actor, targets)
        self.settings: dict[str, Any] = {"rank": int(rank), "alpha": int(alpha), "targets": list(self.layers)}
        config = LoraConfig(r=int(rank), lora_alpha=int(alpha), lora_dropout=0.0, bias="none",
                            target_modules="^(" + "|".join(re.escape(n) for n in self.layers) + ")$")
        with torch.random.fork_rng(devices=[]):  # A's init from the run's seed; the global stream is not moved
            torch.random.default_generator.manual_seed(int(seed) + INIT_SEED_OFFSET)
            inject_adapter_in_model(config, inner.actor, adapter_name=ADAPTER)
        wrapped = lora_layers(inner.actor)
        if sorted(wrapped) != sorted(self.layers):  # peft matched other modules than asked: never train those
            raise RuntimeError(f"peft wrapped {sorted(wrapped)}, not the layers asked for {self.layers}")
        adapters = [p for name, p in inner.actor.named_parameters() if ".lora_A." in name or ".lora_B." in name]
        inner.actor.requires_grad_(False)
        for p in adapters:
            p.requires_grad_(True)
        lr = inner.optim.param_groups[0]["lr"]
        inner.optim = torch.optim.Adam(adapters, lr=lr)  # moments for the adapters only
        self.updates = inner.updates

    @property
    def actor(self) -> PolicyActor:
        return self.inner.actor

    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        out = self.inner.update(batch)
        self.updates = self.inner.updates
        return out

    def actor_state(self) -> dict[str, Tensor]:
        """What robots receive: plain-arch tensors, adapters merged; the training copy is untouched."""
        return merged_state(self.inner.actor)

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), "lora": dict(self.settings)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; ValueError when the checkpoint was not trained with these adapters."""
        if d.get("lora") != self.settings:
            what = "every weight (finetune = \"full\")" if d.get("lora") is None else f"adapters {d.get('lora')}"
            raise ValueError(f"the checkpoint trained {what}; this run trains adapters {self.settings} "
                             "(learner.finetune, lora_rank, lora_alpha, lora_targets)")
        self.inner.load_state_dict({k: v for k, v in d.items() if k != "lora"})
        self.updates = self.inner.updates

    def load_actor(self, tensors: Mapping[str, Tensor]) -> None:
        """Plain-arch tensors (a published policy) become the frozen base weights; adapters restart from zero
        (B = 0), so the learner computes exactly that policy. RuntimeError when they do not fit the arch."""
        layers = lora_layers(self.inner.actor)
        own = self.inner.actor.state_dict()
        new: dict[str, Tensor] = {}
        for key, value in tensors.items():
            layer, _, leaf = key.rpartition(".")
            new[f"{layer}.base_layer.{leaf}" if layer in layers else key] = value
        for name in layers:
            new[f"{name}.lora_A.{ADAPTER}.weight"] = own[f"{name}.lora_A.{ADAPTER}.weight"]
            new[f"{name}.lora_B.{ADAPTER}.weight"] = torch.zeros_like(own[f"{name}.lora_B.{ADAPTER}.weight"])
        with torch.no_grad():
            self.inner.actor.load_state_dict(new)
