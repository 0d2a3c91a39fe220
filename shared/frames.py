"""Camera frames out of stored rows, and every row's next frame rebuilt.

Frames are stored once (schema version 2): ``obs.<camera>`` holds every row's
frame, ``next_obs.<camera>`` only the last row's of each chunk (null elsewhere),
and steps in a chunk are consecutive. Chunks stay whole and in order in a
segment (and in any row group or slice of one that ends on a chunk's end), so in
a table of stored rows::

    next frame of row i = next_obs[i] if present, else obs[i + 1]

An episode's last step always ends a chunk, so it keeps its own final frame and
nothing leaks across episode, robot or segment boundaries. A table that stops
inside a chunk has no next frame for its last row: that is an error here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from .image_codec import decode_image
from .schema import NEXT_PREFIX, OBS_PREFIX, FieldSpec


def decode_frames(column: pa.Array | pa.ChunkedArray, spec: FieldSpec,
                  compact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [n, H, W, C], bool mask [n] of non-null rows); null rows are zeros.

    Raw frames of a column without nulls in one chunk are a read-only zero-copy view of
    the Arrow buffer (it keeps the buffer alive); otherwise the result is a new array,
    and only non-null rows are copied or decoded (png/jpeg via ``decode_image``).
    ``compact``: frames of the non-null rows only, [mask.sum(), H, W, C], in row order
    (for a ``next_obs`` column: no n-row array for a few frames).
    """
    if not spec.is_image:
        raise ValueError(f"decode_frames needs an image field spec, got {spec.dtype} of shape {spec.shape}")
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    n = len(column)
    if compact:
        parts = [_decode_array(c, spec, compact=True) for c in chunks]
        if len(parts) == 1:
            return parts[0]
        return (np.concatenate([f for f, _ in parts]) if parts else np.zeros((0, *spec.shape), np.uint8),
                np.concatenate([m for _, m in parts]) if parts else np.zeros(0, bool))
    if len(chunks) == 1:
        return _decode_array(chunks[0], spec)
    frames = np.zeros((n, *spec.shape), np.uint8)
    mask = np.zeros(n, bool)
    at = 0
    for chunk in chunks:
        f, m = _decode_array(chunk, spec)
        frames[at : at + len(chunk)][m] = f[m]
        mask[at : at + len(chunk)] = m
        at += len(chunk)
    return frames, mask


def _decode_array(arr: pa.Array, spec: FieldSpec, compact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    n, size = len(arr), spec.size
    mask = np.ones(n, bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(mask)
    if (spec.codec or "raw") == "raw" and arr.type == pa.binary(size):
        data = arr.buffers()[1]
        if data is None or data.size < (arr.offset + n) * size:
            raise ValueError(f"raw frame column holds {0 if data is None else data.size} bytes, too few for {n} rows")
        view = np.frombuffer(data, np.uint8, count=n * size, offset=arr.offset * size).reshape(n, *spec.shape)
        if arr.null_count == 0:
            return view, mask  # zero-copy
        if compact:
            return view[rows], mask
        frames = np.zeros((n, *spec.shape), np.uint8)
        frames[rows] = view[rows]
        return frames, mask
    # png/jpeg, or a next-frame column (variable binary, one frame per chunk): only non-null rows are touched
    frames = np.zeros((len(rows) if compact else n, *spec.shape), np.uint8)
    values = arr.drop_null().to_pylist() if arr.null_count else arr.to_pylist()
    for j, (i, value) in enumerate(zip(rows, values)):
        frames[j if compact else i] = decode_image(value, spec)
    return frames, mask


def next_frames(obs: np.ndarray, next_or_none: Sequence[np.ndarray | None] | np.ndarray,
                mask: np.ndarray | None = None) -> np.ndarray:
    """Every row's next frame, [n, H, W, C], from a table's ``obs`` frames [n, H, W, C].

    ``next_or_none``: either one entry per row, a frame or None (``mask`` omitted), or the
    frames array ``decode_frames`` gives for ``next_obs`` with its ``mask``. ValueError if
    the last row has no next frame (the table does not end on a chunk's last row).
    """
    n = len(obs)
    if mask is None:
        mask = np.fromiter((x is not None for x in next_or_none), bool, len(next_or_none))
        stored = {int(i): next_or_none[int(i)] for i in np.flatnonzero(mask)}
    else:
        mask = np.asarray(mask, bool)
        stored = None
    if len(mask) != n:
        raise ValueError(f"{len(mask)} next-frame entries for {n} rows")
    if n and not mask[-1]:
        raise ValueError(f"row {n - 1} has no next frame: the table does not end on a chunk's last row")
    out = np.empty_like(obs)
    out[:-1] = obs[1:]
    if stored is None:
        nxt = np.asarray(next_or_none)
        if nxt.shape != obs.shape:
            raise ValueError(f"next frames have shape {nxt.shape}, obs frames {obs.shape}")
        out[mask] = nxt[mask]
    else:
        for i, frame in stored.items():
            out[i] = frame
    return out


def gather(obs: np.ndarray, nxt: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(obs frames, next frames) of the selected ``rows`` only: what a sampler needs from a
    decoded row group without rebuilding every row's next frame. Same rule as :func:`next_frames`."""
    rows = np.asarray(rows, np.int64)
    n = len(obs)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows out of range 0..{n - 1}")
    present = mask[rows]
    if not np.all(present | (rows < n - 1)):
        raise ValueError(f"row {n - 1} has no next frame: the table does not end on a chunk's last row")
    out = obs[np.minimum(rows + 1, n - 1)]
    out[present] = nxt[rows[present]]
    return obs[rows], out


def check_order(steps: np.ndarray, mask: np.ndarray) -> None:
    """ValueError unless every row without a stored next frame is followed by its next step."""
    steps = np.asarray(steps, np.int64)
    if len(steps) < 2:
        return
    bad = np.flatnonzero(~mask[:-1] & (np.diff(steps) != 1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"row {i} (step {steps[i]}) has no stored next frame and is followed by step "
                         f"{steps[i + 1]}: rows are not whole chunks in stored order")


def table_frames(table: pa.Table | pa.RecordBatch, field: str, spec: FieldSpec) -> tuple[np.ndarray, np.ndarray]:
    """(obs frames, next frames), each uint8 [n, H, W, C], of camera ``field`` in a table of stored
    rows (whole chunks in stored order: a segment, a row group, or a chunk). The step column, when
    present, is checked to follow the rule, so a reordered table fails instead of pairing wrong frames."""
    obs, obs_mask = decode_frames(table.column(OBS_PREFIX + field), spec)
    if not obs_mask.all():
        raise ValueError(f"column {OBS_PREFIX + field!r} has null frames")
    nxt, mask = decode_frames(table.column(NEXT_PREFIX + field), spec)
    if "step" in table.column_names:
        check_order(table.column("step").to_numpy(), mask)
    return obs, next_frames(obs, nxt, mask)


__all__ = ["check_order", "decode_frames", "gather", "next_frames", "table_frames"]
