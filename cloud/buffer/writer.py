"""The buffer's write path (TorchRL's ``Writer``): durable segment first, then memory.

``pack`` turns what ingest hands over (chunks and loss reports, in stream
order) into one segment's table and the robots' marks; ``RingWriter`` turns a
stored table into the ring's columns (and its camera frames into the frame ring). The replay buffer calls them in
that order, so memory never holds a row that is not on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import pyarrow as pa

from shared.errors import SchemaError
from shared.protocol import Lost
from shared.schema import NEXT_PREFIX, OBS_PREFIX, EpisodeSpec

from ..learner.chunks import CHUNK, CHUNK_VALID, chunk_indices, episode_keys, order_rows
from .images import TableFrames, table_frames
from .memory import FrameRing, RingStorage
from .source import IMAGES, NEXT_IMAGES

# Per-row marks of people's part in a step, served in every batch as float32 (0/1 for the flags):
# what RLPD's demo sampling, BC/HG-DAgger and the "human" reward read.
HUMAN_COLUMNS = ("human_reward", "intervention", "demo")
FRAME = "frame"  # ring column with images: the row's obs frame number in the FrameRing (next frame: + 1)
Item = tuple[str, int, Union[pa.RecordBatch, Lost]]  # robot id, stream seq, chunk rows or a reported loss


@dataclass
class Packed:
    """One segment's worth: its rows (None when only losses came), each robot's [first, last, rows], the losses."""

    table: pa.Table | None
    robots: dict[str, list[int]] = field(default_factory=dict)
    lost: list[dict[str, Any]] = field(default_factory=list)


def pack(items: list[Item]) -> Packed:
    """Rows get their ``stream_seq`` column (what recovery and export key on); losses move marks only."""
    tables: list[pa.Table] = []
    out = Packed(None)
    for rid, seq, item in items:
        if isinstance(item, Lost):
            first, last, rows = out.robots.get(rid, [item.first, item.last, 0])
            out.robots[rid] = [min(first, item.first), max(last, item.last), rows]
            out.lost.append({"robot_id": rid, "first": item.first, "last": item.last, "reason": item.reason})
            continue
        t = pa.Table.from_batches([item]).append_column("stream_seq", pa.array([seq] * item.num_rows, pa.uint64()))
        tables.append(t)
        first, last, rows = out.robots.get(rid, [seq, seq, 0])
        out.robots[rid] = [min(first, seq), max(last, seq), rows + item.num_rows]
    out.table = pa.concat_tables(tables) if tables else None
    return out


def _scalar(table: pa.Table | pa.RecordBatch, name: str, n: int) -> np.ndarray:
    """A per-row number as float32; zeros for a column rows of an older layout lack (schema version < 3)."""
    if name not in table.schema.names:
        return np.zeros(n, np.float32)
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float32)


def _flat(column: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)


class RingWriter:
    """State fields (in ``obs_fields`` order), action as recorded, reward, terminated -> the ring's columns.

    With ``image_fields``, those cameras' frames go to a ``FrameRing`` and each row
    keeps the number of its obs frame (``frame``; its next frame is ``frame + 1``).
    """

    def __init__(self, spec: EpisodeSpec, obs_fields: list[str], image_fields: list[str] | None = None):
        self.spec = spec
        self.obs_fields = list(obs_fields)
        self.image_fields = list(image_fields or [])
        self.obs_dim = spec.state_dim(self.obs_fields)
        self.act_dim = spec.action_dim

    def columns(self) -> dict[str, tuple[int, ...]]:
        """The ring's column shapes (per row)."""
        cols: dict[str, tuple[int, ...]] = {"obs": (self.obs_dim,), "action": (self.act_dim,), "reward": (),
                                            "next_obs": (self.obs_dim,), "terminated": ()}
        cols.update({k: () for k in HUMAN_COLUMNS})
        if self.image_fields:
            cols[FRAME] = ()
        return cols

    def dtypes(self) -> dict[str, str]:
        """Columns that are not float32."""
        return {FRAME: "int64"} if self.image_fields else {}

    def image_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f: self.spec.observation[f].shape for f in self.image_fields}

    def empty_batch(self, n: int) -> dict[str, np.ndarray]:
        """A batch of ``n`` rows to fill: the ring's float32 columns and each camera's frames."""
        out = {k: np.empty((n, *shape), np.float32) for k, shape in self.columns().items() if k != FRAME}
        for f, shape in self.image_shapes().items():
            out[IMAGES + f] = np.empty((n, *shape), np.uint8)
            out[NEXT_IMAGES + f] = np.empty((n, *shape), np.uint8)
        return out

    def rows(self, table: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
        n = table.num_rows
        return {
            "obs": self._state(table, OBS_PREFIX, n),
            "action": _flat(table.column("action"), n),
            "reward": table.column("reward").to_numpy(),
            "next_obs": self._state(table, NEXT_PREFIX, n),
            "terminated": table.column("terminated").to_numpy(zero_copy_only=False).astype(np.float32),
            **{k: _scalar(table, k, n) for k in HUMAN_COLUMNS},
        }

    def _state(self, table: pa.Table | pa.RecordBatch, prefix: str, n: int) -> np.ndarray:
        parts = [_flat(table.column(prefix + f), n) for f in self.obs_fields]
        if not parts:  # cameras only: no state vector
            return np.zeros((n, 0), np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def frames(self, table: pa.Table | pa.RecordBatch) -> TableFrames:
        return table_frames(table, self.spec, self.image_fields)

    def write(self, storage: RingStorage, table: pa.Table | pa.RecordBatch, frames: FrameRing | None = None,
              decoded: TableFrames | None = None) -> None:
        """Rows (and, with cameras, their frames: ``decoded`` if the caller laid them out) into memory, as one
        step for readers."""
        if not table.num_rows:
            return
        rows = self.rows(table)
        if not self.image_fields:
            storage.extend(rows)
            return
        if frames is None:
            raise ValueError("a writer with image fields needs the frame ring")
        tf = decoded or self.frames(table)
        if not tf.valid.all():
            raise SchemaError(f"stored rows end without the final frame of {self.image_fields}: "
                              f"a table for memory must hold whole chunks")
        with storage.lock:
            rows[FRAME] = frames.push(tf) + tf.first
            storage.extend(rows)


class ChunkWriter(RingWriter):
    """The demo ring's writer for a chunked policy (``learner.policy = "flow"``): each row also keeps the
    chunk of its episode's next ``horizon`` actions (``action_chunk``, robot units like ``action``) and which
    of them were really taken (``chunk_valid``). Chunks are cut within the table written (a segment's, or an
    import's rows), per robot and episode, so a chunk never crosses an episode, a lost range, the gap between
    a person's corrections, or the end of the stored segment (:mod:`cloud.learner.chunks`)."""

    def __init__(self, spec: EpisodeSpec, obs_fields: list[str], horizon: int):
        super().__init__(spec, obs_fields)
        self.horizon = int(horizon)

    def columns(self) -> dict[str, tuple[int, ...]]:
        return {**super().columns(), CHUNK: (self.horizon, self.act_dim), CHUNK_VALID: (self.horizon,)}

    def rows(self, table: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = order_rows(table)
        out = super().rows(table)
        step = table.column("step").to_numpy(zero_copy_only=False)
        idx, valid = chunk_indices(episode_keys(table), step, self.horizon)
        out[CHUNK] = out["action"][idx]
        out[CHUNK_VALID] = valid.astype(np.float32)
        return out
