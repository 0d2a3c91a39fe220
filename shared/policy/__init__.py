"""Policy networks shared by robots (inference) and the learner (training).

Robots receive weights plus the ``arch`` dict and rebuild the exact module with
:func:`build_actor`; the registry (``registry.py``) knows each kind and version:
``mlp_gaussian`` (state vector), ``cnn_gaussian`` (camera views + state) and
``flow`` (a flow-matching head emitting action chunks over the state vector)
and ``cnn_flow`` (the same head over camera views + state).
"""

from __future__ import annotations

from .cnn import CNNActor, ImageEncoder, View
from .cnn_flow import CNNFlowActor
from .flow import FlowActor
from .gaussian import LOG_STD_MAX, LOG_STD_MIN, GaussianActor, squashed_act, squashed_sample
from .mlp import KIND as ARCH_KIND
from .mlp import VERSION as ARCH_VERSION
from .mlp import Actor
from .registry import (
    KINDS,
    MAX_HIDDEN_LAYERS,
    ArchTooLarge,
    actor_images,
    PolicyActor,
    actor_shapes,
    build_actor,
    build_gaussian,
    check_arch,
    param_count,
)

__all__ = [
    "ARCH_KIND",
    "ARCH_VERSION",
    "KINDS",
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "MAX_HIDDEN_LAYERS",
    "Actor",
    "ArchTooLarge",
    "CNNActor",
    "CNNFlowActor",
    "FlowActor",
    "GaussianActor",
    "ImageEncoder",
    "PolicyActor",
    "View",
    "actor_images",
    "actor_shapes",
    "build_actor",
    "build_gaussian",
    "check_arch",
    "param_count",
    "squashed_act",
    "squashed_sample",
]
