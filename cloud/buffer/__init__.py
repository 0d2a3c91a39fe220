"""The cloud replay buffer: sealed Parquet segments on disk, recent rows in memory."""

from .memory import MemoryStore
from .replay import ReplayBuffer
from .storage import Manifest, SegmentStore

__all__ = ["Manifest", "MemoryStore", "ReplayBuffer", "SegmentStore"]
