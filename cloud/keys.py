"""Typed keys for the state an aiohttp application holds."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.config import LearnerConfig
from shared.protocol import Limits

from .buffer import ReplayBuffer
from .ingest import Ingest
from .learner.trainer import Trainer
from .publisher import WeightPublisher

CONFIG = web.AppKey("config", LearnerConfig)
LIMITS = web.AppKey("limits", Limits)
RESUME = web.AppKey("resume", bool)
BUFFER = web.AppKey("buffer", ReplayBuffer)
INGEST = web.AppKey("ingest", Ingest)
PUBLISHER = web.AppKey("publisher", WeightPublisher)
TRAINER = web.AppKey("trainer", Trainer)
ROBOTS = web.AppKey("robots", dict[str, dict[str, Any]])  # robot id -> live link info
