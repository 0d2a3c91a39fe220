"""The weights format: safetensors bytes, a version, and a sha256 over the bytes.

safetensors carries no code (unlike pickle), and the policy architecture rides
in its metadata so a robot can rebuild the network it is about to load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import WeightsError

FORMAT = "fleetrl.weights.v1"


@dataclass(frozen=True)
class WeightsBlob:
    version: int
    sha256: str
    data: bytes


@dataclass(frozen=True)
class Weights:
    version: int
    arch: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_weights(tensors: dict[str, torch.Tensor], version: int, arch: dict[str, Any]) -> WeightsBlob:
    meta = {"format": FORMAT, "version": str(int(version)), "arch": json.dumps(arch, sort_keys=True)}
    data = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    return WeightsBlob(version=int(version), sha256=sha256(data), data=data)


def decode_weights(data: bytes, expected_sha256: str, max_size: int) -> Weights:
    """Verify and parse a weights blob; anything off raises :class:`WeightsError`."""
    if len(data) > max_size:
        raise WeightsError(f"weights are {len(data)} bytes, limit {max_size}", code="too_large")
    if sha256(data) != expected_sha256:
        raise WeightsError("weights sha256 does not match the announced digest", code="bad_digest")
    meta = _metadata(data)
    if meta.get("format") != FORMAT:
        raise WeightsError(f"unknown weights format {meta.get('format')!r}")
    try:
        version = int(meta["version"])
        arch = json.loads(meta["arch"])
    except (KeyError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise WeightsError(f"bad weights metadata: {e}") from None
    if not isinstance(arch, dict):
        raise WeightsError("weights arch must be a map")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise WeightsError(f"corrupt safetensors data: {e}") from None
    return Weights(version=version, arch=arch, tensors=tensors)


def weights_version(data: bytes) -> int:
    """The version a weights blob carries in its own header (no tensors are read)."""
    meta = _metadata(data)
    try:
        return int(meta["version"])
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"bad weights metadata: {e}") from None


def _metadata(data: bytes) -> dict[str, str]:
    # Read the header ourselves so a malformed one is our error, not a panic.
    if len(data) < 8:
        raise WeightsError("weights shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > 100_000_000:
        raise WeightsError("safetensors header length exceeds the data")
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise WeightsError(f"safetensors header is not JSON: {e}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise WeightsError("safetensors header has no fleetrl metadata")
    return meta
