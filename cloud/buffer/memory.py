"""The buffer's storage part: a ring of columns, float32 unless told (TorchRL's ``Storage``).

Plain storage: fixed-capacity arrays, a write index and a size; when full the
oldest rows are overwritten (they stay on disk in the Parquet segments).
Camera frames go to their own ring (``FrameRing``), sized in bytes. What
goes in (``writer``), which rows come out (``sampler``) and what is done to
them on the way out (``transform``) are the other parts.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .images import TableFrames


class RingStorage:
    def __init__(self, capacity: int, columns: dict[str, tuple[int, ...]], dtypes: dict[str, str] | None = None):
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        unknown = sorted(set(dtypes or ()) - set(columns))
        if unknown:
            raise ValueError(f"dtypes name columns the ring does not have: {unknown}")
        self.capacity = capacity
        self.data = {name: np.zeros((capacity, *shape), (dtypes or {}).get(name, "float32"))
                     for name, shape in columns.items()}
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

    def chronological(self, k: np.ndarray) -> np.ndarray:
        """Slots of the rows ``k`` places from the oldest one held (0: oldest); call under ``lock``."""
        return (self._pos - self.size + k) % self.capacity

    def get(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the rows at ``idx`` (each column)."""
        with self.lock:
            return {k: v[idx] for k, v in self.data.items()}


class FrameRing:
    """Camera frames in memory: one uint8 ring per camera, as many frames as the byte budget holds.

    Frames are numbered from the first ever stored; the ring holds numbers
    ``floor`` .. ``total - 1``. Rows keep the number of their obs frame (next: +1),
    so a row whose frames were overwritten is recognised, never served.
    Writers and readers hold the row ring's lock around both.
    """

    def __init__(self, budget_bytes: int, shapes: dict[str, tuple[int, ...]]):
        per_frame = sum(math.prod(s) for s in shapes.values())
        capacity = budget_bytes // max(per_frame, 1)
        if capacity < 2:
            raise ValueError(f"image memory of {budget_bytes} bytes holds {capacity} frame(s) of "
                             f"{', '.join(f'{k} {v}' for k, v in shapes.items())}; it needs room for 2 at least")
        self.capacity = capacity
        self.data = {name: np.zeros((capacity, *shape), np.uint8) for name, shape in shapes.items()}
        self.total = 0  # frames ever stored

    @property
    def floor(self) -> int:
        """The oldest frame number still held."""
        return max(0, self.total - self.capacity)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.data.values())

    def push(self, frames: TableFrames) -> int:
        """Store a table's frame sequence; returns the frame number of its first frame."""
        start = self.total
        for name, dest in self.data.items():
            frames.put(name, dest, start)
        self.total += frames.count
        return start

    def get(self, name: str, numbers: np.ndarray) -> np.ndarray:
        """Copies of frames by number (all must be held)."""
        return self.data[name][numbers % self.capacity]

    def take(self, name: str, numbers: np.ndarray, out: np.ndarray) -> None:
        """Frames by number (all must be held) into ``out``, without a temporary."""
        np.take(self.data[name], numbers, axis=0, out=out, mode="wrap")
