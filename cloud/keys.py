"""Typed keys for the state an aiohttp application holds."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from shared.config import LearnerConfig
from shared.protocol import Limits

from .admission import SourceCounter
from .buffer import ReplayBuffer
from .groups import GroupRegistry
from .ingest import Ingest
from .policy_server import PolicyServer
from .learner.trainer import Trainer
from .publisher import WeightPublisher
from .robots import RobotRegistry

CONFIG = web.AppKey("config", LearnerConfig)
LIMITS = web.AppKey("limits", Limits)
RESUME = web.AppKey("resume", bool)
GROUPS = web.AppKey("groups", GroupRegistry)  # every embodiment group; a link uses its own group's parts
# The first group's parts, for code that predates groups (a cluster shard has one group); never a link's.
BUFFER = web.AppKey("buffer", ReplayBuffer)
INGEST = web.AppKey("ingest", Ingest)
PUBLISHER = web.AppKey("publisher", WeightPublisher)
TRAINER = web.AppKey("trainer", Trainer)
ROBOTS = web.AppKey("robots", dict[str, Any])  # robot id -> live gateway.Link
REGISTRY = web.AppKey("registry", RobotRegistry)
REJECTIONS = web.AppKey("rejections", Counter[str])  # reason code -> refusals since start
ADMIN_TOKEN = web.AppKey("admin_token", str)
HANDSHAKES = web.AppKey("handshakes", SourceCounter)  # links not yet authenticated, per source address
POLICY_SERVER = web.AppKey("policy_server", PolicyServer)  # answers ActRequests of robots with policy.where = "cloud"
