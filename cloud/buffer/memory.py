"""The buffer's storage part: a ring of float32 columns (TorchRL's ``Storage``).

Plain storage: fixed-capacity arrays, a write index and a size; when full the
oldest rows are overwritten (they stay on disk in the Parquet segments). What
goes in (``writer``), which rows come out (``sampler``) and what is done to
them on the way out (``transform``) are the other parts.
"""

from __future__ import annotations

import threading

import numpy as np


class RingStorage:
    def __init__(self, capacity: int, columns: dict[str, tuple[int, ...]]):
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.data = {name: np.zeros((capacity, *shape), np.float32) for name, shape in columns.items()}
        self.size = 0
        self.added = 0  # all rows ever added, also those since overwritten
        self._pos = 0  # where the next row goes
        self.lock = threading.RLock()  # held by a reader across "how many rows" and "those rows"

    def __len__(self) -> int:
        return self.size

    def extend(self, rows: dict[str, np.ndarray]) -> None:
        """Append rows (one array per column, equal lengths), overwriting the oldest when full."""
        n = len(next(iter(rows.values())))
        if n == 0:
            return
        if rows.keys() != self.data.keys():
            raise ValueError(f"ring columns are {sorted(self.data)}, rows have {sorted(rows)}")
        if n > self.capacity:  # only the newest rows fit
            rows = {k: v[-self.capacity :] for k, v in rows.items()}
        with self.lock:
            idx = (self._pos + np.arange(min(n, self.capacity))) % self.capacity
            for k, v in rows.items():
                self.data[k][idx] = v
            self._pos = int((idx[-1] + 1) % self.capacity)
            self.size = min(self.capacity, self.size + len(idx))
            self.added += n

    def get(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the rows at ``idx`` (each column)."""
        with self.lock:
            return {k: v[idx] for k, v in self.data.items()}
