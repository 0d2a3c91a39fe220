"""Recent transitions in memory as flat float32 arrays, for fast sampling.

A ring: when full, the oldest rows are overwritten (they stay on disk in the
Parquet segments). Only state fields go here; images stay on disk for now.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from shared.schema import NEXT_PREFIX, OBS_PREFIX, EpisodeSpec


class MemoryStore:
    def __init__(self, spec: EpisodeSpec, obs_fields: list[str], capacity: int):
        self.spec, self.obs_fields, self.capacity = spec, obs_fields, capacity
        self.obs_dim = spec.state_dim(obs_fields)
        self.act_dim = spec.action_dim
        self.obs = np.zeros((capacity, self.obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, self.obs_dim), np.float32)
        self.action = np.zeros((capacity, self.act_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.size = 0
        self.added = 0  # all rows ever added, also those since overwritten
        self._pos = 0
        self._lock = threading.Lock()
        low = np.asarray(spec.action_low or [-1.0] * self.act_dim, np.float32)
        high = np.asarray(spec.action_high or [1.0] * self.act_dim, np.float32)
        self._a_mid, self._a_half = (high + low) / 2, np.maximum((high - low) / 2, 1e-8)

    def _flat(self, table: pa.Table | pa.RecordBatch, prefix: str) -> np.ndarray:
        n = table.num_rows
        parts = []
        for f in self.obs_fields:
            col = table.column(prefix + f)
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            parts.append(col.flatten().to_numpy(zero_copy_only=False).reshape(n, -1))
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def add(self, table: pa.Table | pa.RecordBatch) -> None:
        n = table.num_rows
        if n == 0:
            return
        act = table.column("action")
        if isinstance(act, pa.ChunkedArray):
            act = act.combine_chunks()
        rows = {
            "obs": self._flat(table, OBS_PREFIX),
            "next_obs": self._flat(table, NEXT_PREFIX),
            "action": (act.flatten().to_numpy(zero_copy_only=False).reshape(n, -1) - self._a_mid) / self._a_half,
            "reward": table.column("reward").to_numpy(),
            "terminated": table.column("terminated").to_numpy(zero_copy_only=False).astype(np.float32),
        }
        if n > self.capacity:  # only the newest rows fit
            rows = {k: v[-self.capacity :] for k, v in rows.items()}
        with self._lock:
            idx = (self._pos + np.arange(len(rows["reward"]))) % self.capacity
            for k, v in rows.items():
                getattr(self, k)[idx] = v
            self._pos = int((idx[-1] + 1) % self.capacity)
            self.size = min(self.capacity, self.size + len(idx))
            self.added += n

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        with self._lock:
            idx = rng.integers(0, self.size, batch_size)
            return {
                "obs": self.obs[idx], "action": self.action[idx], "reward": self.reward[idx],
                "next_obs": self.next_obs[idx], "terminated": self.terminated[idx],
            }
