"""Learner checkpoints without pickle: tensors in safetensors, the rest as JSON.

Any nest of dicts (any scalar keys), lists, tensors and JSON scalars packs
into one safetensors file whose metadata holds the structure; the file is
written under a temporary name, fsynced and renamed, so a kill -9 mid-write
leaves the previous checkpoint intact. Also here, the other files a start reads: the published
policy a resume builds on, and ``learner.encoder_weights`` (initial encoder tensors, a local
safetensors file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from shared.errors import ConfigError, WeightsError
from shared.faults import crash_point
from shared.fsutil import fsync_dir
from shared.weights import WeightsBlob, decode_weights

from .normalize import ObsNormalizer

FORMAT = "fleetrl.checkpoint.v1"


def pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__t": key}
    if isinstance(obj, dict):
        return {"__d": [[pack(k, tensors), pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__l": [pack(v, tensors) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unpack(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__t" in node:
            return tensors[node["__t"]]
        if "__d" in node:
            return {unpack(k, tensors): unpack(v, tensors) for k, v in node["__d"]}
        if "__l" in node:
            items = [unpack(v, tensors) for v in node["__l"]]
            return tuple(items) if node.get("tuple") else items
    return node


def save(path: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack(state, tensors)
    data = st_save(tensors, metadata={"format": FORMAT, "state": json.dumps(skeleton)})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        crash_point("checkpoint_mid_write")
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fleetrl checkpoint")
    return unpack(json.loads(meta["state"]), st_load(data))


def published_actor(blob: WeightsBlob, obs_fields: list[str], actor_arch: dict[str, Any],
                    norm: ObsNormalizer | None) -> dict[str, torch.Tensor]:
    """The actor tensors of a policy this run published, for an actor trained on normalised inputs when
    ``norm`` is given (the inverse of publishing's fold). WeightsError if it is not this run's kind of policy."""
    weights = decode_weights(blob.data, blob.sha256, len(blob.data))
    if weights.arch.get("obs_fields") != obs_fields:
        raise WeightsError(f"observation fields {weights.arch.get('obs_fields')} differ from this run's {obs_fields}")
    ours = json.loads(json.dumps(actor_arch))
    if weights.arch.get("actor") != ours:
        raise WeightsError(f"policy arch {weights.arch.get('actor')} differs from this run's {ours}")
    return weights.tensors if norm is None else norm.unfold(weights.tensors)


def check_encoder_weights_file(path: Path) -> None:
    """ConfigError unless ``learner.encoder_weights`` names a local file (checked at start, and on load)."""
    if not path.is_file():
        raise ConfigError(f"learner.encoder_weights = {str(path)!r}: no such file (encoder weights are read from "
                          "a local file; nothing is downloaded)")


def load_encoder_weights(path: Path, encoder: torch.nn.Module) -> int:
    """Load ``learner.encoder_weights`` (a local safetensors file) into ``encoder``; the tensor count.

    Keys are the encoder's own (``stacks.0.convs.0.weight``) or an actor's (``encoder.stacks.0...``,
    e.g. cut from a published policy). Anything that does not fit exactly is a ConfigError
    naming the keys and shapes, never a partial load.
    """
    what = f"learner.encoder_weights = {str(path)!r}"
    check_encoder_weights_file(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{what}: not a readable safetensors file ({e})") from e
    if tensors and all(k.startswith("encoder.") for k in tensors):
        tensors = {k[len("encoder."):]: v for k, v in tensors.items()}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [f"{k}: file {tuple(tensors[k].shape)}, encoder {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(tensors)) if tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}" if missing else "",
                 f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}" if unexpected else "",
                 f"shape mismatch {wrong[:6]}" if wrong else ""]
        raise ConfigError(f"{what} does not fit this encoder (encoder_channels/encoder_latent/image_fields): "
                          + "; ".join(p for p in parts if p))
    with torch.no_grad():
        encoder.load_state_dict(tensors)
    return len(tensors)
