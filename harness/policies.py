"""Policy files for tests and benchmarks: small flow (action chunks), cnn_gaussian and cnn_flow (camera
views) policies for a robot's fields, written as the learner's ``inference.weights`` reads them (nothing
is downloaded; the weights are random: these measure the plumbing, not the task)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from shared.policy import CNNFlowActor, FlowActor
from shared.policy.cnn import CNNActor
from shared.weights import encode_weights


def flow_policy_file(path: Path, fields: Sequence[str], obs_dim: int, act_dim: int, horizon: int = 10,
                     hidden: Sequence[int] = (64, 64), steps: int = 5, version: int = 1, seed: int = 0) -> Path:
    """A FlowActor reading ``fields`` (``obs_dim`` floats in all), emitting [horizon, act_dim] chunks."""
    torch.manual_seed(seed)
    actor = FlowActor(obs_dim, act_dim, horizon=horizon, hidden=hidden, steps=steps)
    blob = encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": list(fields)})
    path.write_bytes(blob.data)
    return path


def cnn_policy_file(path: Path, fields: Sequence[str], obs_dim: int, act_dim: int,
                    views: Sequence[tuple[str, tuple[int, int, int]]], hidden: Sequence[int] = (32,),
                    channels: Sequence[int] = (8, 8), latent: int = 16, version: int = 1, seed: int = 0) -> Path:
    """A ``cnn_gaussian`` actor reading ``views`` (camera name, HxWxC) and ``fields`` (``obs_dim`` floats)."""
    torch.manual_seed(seed)
    actor = CNNActor(obs_dim, act_dim, hidden, views, channels, latent)
    blob = encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": list(fields)})
    path.write_bytes(blob.data)
    return path


def cnn_flow_policy_file(path: Path, fields: Sequence[str], obs_dim: int, act_dim: int,
                         views: Sequence[tuple[str, tuple[int, int, int]]], horizon: int = 10,
                         hidden: Sequence[int] = (64, 64), steps: int = 5, channels: Sequence[int] = (8, 8),
                         latent: int = 16, version: int = 1, seed: int = 0) -> Path:
    """A ``cnn_flow`` actor reading ``views`` (camera name, HxWxC) and ``fields`` (``obs_dim`` floats, may be
    0), emitting [horizon, act_dim] chunks."""
    torch.manual_seed(seed)
    actor = CNNFlowActor(obs_dim, act_dim, views, horizon=horizon, hidden=hidden, steps=steps, channels=channels,
                         latent=latent)
    blob = encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": list(fields)})
    path.write_bytes(blob.data)
    return path
