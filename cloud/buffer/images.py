"""Camera frames of stored rows, laid out once per step (what memory and the disk cache hold).

Frames are stored once (schema version 2): a camera's ``next_obs`` column
holds a frame only on a chunk's last row, and row i's next frame is row i+1's
``obs`` frame. A table's frames are therefore laid out in one sequence per
camera: each row's obs frame, followed by its stored next frame where there is
one. Row i's obs frame is at ``first[i]`` and its next frame at ``first[i] + 1``
whichever way it was stored, so one frame number per row names both frames.
A row whose next frame is in neither place (a table cut inside a chunk) is
marked not ``valid``: nothing may serve it. (The rule itself: ``shared.frames``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.errors import SchemaError
from shared.frames import check_order, decode_frames
from shared.schema import NEXT_PREFIX, OBS_PREFIX, EpisodeSpec


@dataclass
class TableFrames:
    """One table's camera frames: obs frames, stored next frames, and where each row's frames go."""

    obs: dict[str, np.ndarray]  # field -> [n, H, W, C], every row's obs frame
    next: dict[str, np.ndarray]  # field -> [p, H, W, C], the next frames stored on the ``present`` rows, in order
    present: np.ndarray  # [n] bool: the row's next frame is stored on it
    first: np.ndarray  # [n] int64: the row's obs frame in the table's frame sequence (its next: first + 1)
    valid: np.ndarray  # [n] bool: the row's next frame is known
    count: int  # frames in the sequence

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.obs.values(), *self.next.values(), self.present, self.first, self.valid))

    def gather(self, field: str, rows: np.ndarray, out_obs: np.ndarray, out_next: np.ndarray) -> None:
        """Obs and next frames of ``rows`` (valid rows only) into ``out_obs`` and ``out_next``."""
        obs = self.obs[field]
        np.take(obs, rows, axis=0, out=out_obs, mode="clip")
        np.take(obs, rows + 1, axis=0, out=out_next, mode="clip")  # next = the following obs frame...
        p = np.flatnonzero(self.present[rows])
        if p.size:  # ...except where the row keeps its own (a chunk's last row)
            rank = np.cumsum(self.present) - 1
            out_next[p] = self.next[field][rank[rows[p]]]

    def put(self, field: str, dest: np.ndarray, start: int) -> None:
        """Write the field's sequence into the ring ``dest`` as frame numbers ``start``.. (wrapping).

        A sequence longer than the ring leaves only its newest frames there.
        """
        cap, lo = len(dest), self.count - len(dest)
        keep = self.first >= lo
        dest[(start + self.first[keep]) % cap] = self.obs[field][keep]
        nxt = self.first[self.present] + 1
        keep = nxt >= lo
        dest[(start + nxt[keep]) % cap] = self.next[field][keep]


def table_frames(table: pa.Table | pa.RecordBatch, spec: EpisodeSpec, fields: list[str]) -> TableFrames:
    """Lay out the ``fields`` cameras of stored rows (whole chunks, in stored order)."""
    obs = {f: decode_frames(table.column(OBS_PREFIX + f), spec.observation[f])[0] for f in fields}
    step = table.column("step").to_numpy() if "step" in table.schema.names else None
    return layout(obs, {f: table.column(NEXT_PREFIX + f) for f in fields}, spec, step)


def layout(obs: dict[str, np.ndarray], next_columns: dict[str, pa.Array | pa.ChunkedArray], spec: EpisodeSpec,
           step: np.ndarray | None = None) -> TableFrames:
    """The layout from each camera's obs frames (however they were read) and its ``next_obs`` column;
    ``step``, where given, is checked to follow the rule."""
    n = len(next(iter(obs.values())))
    stored: dict[str, np.ndarray] = {}  # each camera's next frames, on the rows that hold one
    masks: dict[str, np.ndarray] = {}
    for f, col in next_columns.items():
        masks[f] = np.ones(n, bool) if col.null_count == 0 else col.is_valid().to_numpy(zero_copy_only=False)
        stored[f], _ = decode_frames(pc.drop_null(col), spec.observation[f])  # the few stored frames only
    present = np.zeros(n, bool)
    for m in masks.values():
        present |= m
    if step is not None:
        try:
            check_order(step, present)
        except ValueError as e:
            raise SchemaError(f"camera frames of stored rows: {e}") from None
    valid = np.ones(n, bool)
    if n:
        valid[-1] = bool(present[-1])
    rank = np.cumsum(present) - 1
    nxt: dict[str, np.ndarray] = {}
    for f, m in masks.items():
        if np.array_equal(m, present):  # every camera stores its next frame on the same rows (as chunks do)
            nxt[f] = stored[f]
            continue
        nxt[f] = np.zeros((int(present.sum()), *obs[f].shape[1:]), np.uint8)
        nxt[f][rank[m]] = stored[f]
        # A camera without a next frame on a row where another camera has one: its next is the following obs frame.
        gap = np.flatnonzero(present & ~m)
        inside = gap[gap + 1 < n]
        nxt[f][rank[inside]] = obs[f][inside + 1]
        valid[gap[gap + 1 >= n]] = False
    first = np.arange(n, dtype=np.int64) + rank + 1 - present
    return TableFrames(obs, nxt, present, first, valid, n + int(present.sum()))
