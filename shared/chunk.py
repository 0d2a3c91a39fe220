"""Episode chunks: steps -> Arrow record batch -> IPC stream -> zstd, and back.

Decoding is strict: a chunk must match the schema its robot announced, must
stay under the size limits, and must validate fully, or it is refused.

Camera frames are stored once (schema version 2): a step's next frame is the
next step's frame, so a chunk carries ``next_obs.<camera>`` only on its last
row (null elsewhere) and its steps must be consecutive; :mod:`shared.frames`
rebuilds every row's next frame from that.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from .compression import compress, decompress
from .errors import SchemaError
from .image_codec import decode_image, encode_image
from .protocol.messages import Chunk
from .schema import NEXT_PREFIX, OBS_PREFIX, SCHEMA_VERSION, V3_COLUMNS, V4_COLUMNS, EpisodeSpec, FieldSpec


@dataclass
class StepRecord:
    """One transition as the control loop saw it; kept as numpy until encoding."""

    obs: dict[str, np.ndarray]
    action: np.ndarray
    reward: float
    next_obs: dict[str, np.ndarray]
    terminated: bool
    truncated: bool
    success: bool = False
    intervention: bool = False  # a human chose ``action`` (took over from the policy)
    policy_version: int = 0
    step: int = 0
    t_ns: int = field(default_factory=time.time_ns)
    policy_action: np.ndarray | None = None  # what the policy proposed; None: it is ``action``
    human_reward: float = 0.0  # labels from people, apart from the driver's ``reward``
    demo: bool = False  # part of a recorded demonstration
    chunk_index: int = -1  # position of ``action`` in the action chunk that planned it (-1: not from a chunk)


def build_batch(spec: EpisodeSpec, robot_id: str, episode_id: str, steps: list[StepRecord]) -> pa.RecordBatch:
    """Columnar batch for one chunk; image fields are encoded with their codec here.

    For camera fields only the last step's ``next_obs`` frame is encoded: the others
    are taken to be the following step's ``obs`` frame (as the control loop records them).
    """
    if not steps:
        raise SchemaError("a chunk needs at least one step")
    n = len(steps)
    if spec.image_fields:
        _check_consecutive(np.fromiter((s.step for s in steps), np.int64, n))
    cols: dict[str, pa.Array] = {
        "robot_id": pa.array([robot_id] * n, pa.string()),
        "episode_id": pa.array([episode_id] * n, pa.string()),
        "step": pa.array([s.step for s in steps], pa.int32()),
        "t_ns": pa.array([s.t_ns for s in steps], pa.int64()),
        "policy_version": pa.array([s.policy_version for s in steps], pa.int32()),
    }
    schema = spec.arrow_schema()
    for prefix, attr in ((OBS_PREFIX, "obs"), (NEXT_PREFIX, "next_obs")):
        for name, fs in spec.observation.items():
            typ = schema.field(prefix + name).type
            values = [getattr(s, attr)[name] for s in steps]
            if fs.is_image and prefix == NEXT_PREFIX:  # frames stored once: the chunk's final frame only
                cols[prefix + name] = pa.array([None] * (n - 1) + [encode_image(values[-1], fs)], typ)
            elif fs.is_image and (fs.codec or "raw") == "raw":
                cols[prefix + name] = _raw_frames(values, fs, typ)
            elif fs.is_image:
                cols[prefix + name] = pa.array([encode_image(v, fs) for v in values], typ)
            else:
                flat = np.asarray(values, dtype=np.float32).reshape(n, fs.size)
                cols[prefix + name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), fs.size)
    act = np.asarray([s.action for s in steps], dtype=np.float32).reshape(n, spec.action_dim)
    cols["action"] = pa.FixedSizeListArray.from_arrays(pa.array(act.ravel()), spec.action_dim)
    cols["reward"] = pa.array([s.reward for s in steps], pa.float32())
    for flag in ("terminated", "truncated", "success", "intervention", "demo"):
        cols[flag] = pa.array([bool(getattr(s, flag)) for s in steps], pa.bool_())
    proposed = np.asarray([s.action if s.policy_action is None else s.policy_action for s in steps],
                          dtype=np.float32).reshape(n, spec.action_dim)
    cols["policy_action"] = pa.FixedSizeListArray.from_arrays(pa.array(proposed.ravel()), spec.action_dim)
    cols["human_reward"] = pa.array([s.human_reward for s in steps], pa.float32())
    cols["chunk_index"] = pa.array([s.chunk_index if s.chunk_index >= 0 else None for s in steps], pa.int32())
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def _raw_frames(values: list[np.ndarray], fs: FieldSpec, typ: pa.DataType) -> pa.Array:
    """Raw frames as one fixed-size-binary column from one stacked buffer (no per-frame bytes objects)."""
    for v in values:
        if v.shape != fs.shape or v.dtype != np.uint8:
            raise SchemaError(f"image has shape {v.shape} {v.dtype}, expected {fs.shape} uint8")
    data = np.stack(values)
    return pa.FixedSizeBinaryArray.from_buffers(typ, len(values), [None, pa.py_buffer(data)])


def encode_chunk(batch: pa.RecordBatch, level: int = 3) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return compress(sink.getvalue().to_pybytes(), level)


def checksum(body: bytes) -> int:
    return zlib.crc32(body) & 0xFFFFFFFF


@dataclass(frozen=True)
class EncodedChunk:
    """One chunk, encoded and checksummed, before it has a stream sequence (the spool or sink gives it one)."""

    episode_id: str
    rows: int
    raw_size: int  # Arrow bytes before compression: what the receiver bounds decompression by
    crc32: int
    body: bytes

    def message(self, seq: int) -> Chunk:
        return Chunk(seq, self.episode_id, self.rows, self.raw_size, self.crc32, self.body)


def make_chunk(spec: EpisodeSpec, robot_id: str, episode_id: str, steps: list[StepRecord],
               level: int = 3) -> EncodedChunk:
    """Steps -> the chunk a robot (or a sim worker, or a benchmark) sends: the one encoder for all of them."""
    batch = build_batch(spec, robot_id, episode_id, steps)
    body = encode_chunk(batch, level)
    return EncodedChunk(episode_id, batch.num_rows, batch.nbytes, checksum(body), body)


def decode_chunk(body: bytes, spec: EpisodeSpec, *, max_decompressed: int, max_rows: int) -> pa.RecordBatch:
    """Inverse of :func:`encode_chunk`, refusing anything off-schema or over the limits."""
    raw = decompress(body, max_decompressed)
    try:
        return _decode_ipc(raw, spec, max_rows)
    except UnicodeDecodeError as e:
        raise SchemaError(f"chunk holds text that is not UTF-8: {e.reason}") from None


def _decode_ipc(raw: bytes, spec: EpisodeSpec, max_rows: int) -> pa.RecordBatch:
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(raw))
        batches = list(reader)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise SchemaError(f"chunk is not a valid Arrow IPC stream: {e}") from None
    if len(batches) != 1:
        raise SchemaError(f"a chunk holds exactly one record batch, got {len(batches)}")
    batch = batches[0]
    if batch.get_total_buffer_size() > len(raw):
        # Only IPC buffer compression makes a batch larger than its bytes; it would
        # slip past the decompression bound, so chunks must not use it.
        raise SchemaError("chunk uses Arrow IPC buffer compression, which is not allowed", code="too_large")
    expected, required, varlen = _expected(spec)
    if not batch.schema.equals(expected, check_metadata=False):
        raise SchemaError(_schema_diff(batch.schema, expected))
    if batch.num_rows == 0 or batch.num_rows > max_rows:
        raise SchemaError(f"chunk has {batch.num_rows} rows; allowed 1..{max_rows}")
    try:
        # Buffer sizes for every column; offsets and UTF-8 value by value only where lengths vary (strings,
        # PNG/JPEG frames): fixed-size columns have nothing more a full pass would find.
        batch.validate()
        for i in varlen:
            batch.column(i).validate(full=True)
    except (pa.ArrowException, ValueError) as e:
        raise SchemaError(f"chunk fails validation: {e}") from None
    if any(batch.column(i).null_count for i in required):
        raise SchemaError("chunk holds nulls in non-nullable columns")
    if spec.image_fields:
        _check_frames_once(batch, spec)
        _check_encoded_frames(batch, spec)
    return upgrade(batch.replace_schema_metadata(expected.metadata))


_SCHEMAS: dict[int, tuple[EpisodeSpec, tuple[pa.Schema, list[int], list[int]]]] = {}


def _expected(spec: EpisodeSpec) -> tuple[pa.Schema, list[int], list[int]]:
    """(wire schema, non-nullable column indices, variable-length column indices), built once per spec."""
    hit = _SCHEMAS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    schema = spec.arrow_schema()
    required = [i for i, f in enumerate(schema) if not f.nullable]
    varlen = [i for i, f in enumerate(schema) if pa.types.is_string(f.type) or pa.types.is_binary(f.type)
              or pa.types.is_large_string(f.type) or pa.types.is_large_binary(f.type)]
    if len(_SCHEMAS) > 256:  # specs are few (one per run and robot layout); never grow without bound
        _SCHEMAS.clear()
    _SCHEMAS[id(spec)] = (spec, (schema, required, varlen))
    return schema, required, varlen


T = TypeVar("T", pa.RecordBatch, pa.Table)


def upgrade(data: T) -> T:
    """Rows of an older layout (a robot's chunk, a stored segment) in this build's: the columns schema
    version 3 added get what such a row means (the policy's action, no human reward, no demo), and
    version 4's ``chunk_index`` is null (no chunk planned them)."""
    names = data.schema.names
    if all(c in names for c in V3_COLUMNS + V4_COLUMNS):
        return data
    if all(c in names for c in V3_COLUMNS):
        return _add_chunk_index(data)
    lacking = [c for c in ("action", "intervention") if c not in names]
    if lacking:  # not fleetrl rows of any version (a foreign Parquet file)
        raise SchemaError(f"rows lack the column(s) {lacking} every fleetrl layout has")
    n = data.num_rows
    action = data.column("action")
    added = {"policy_action": action, "human_reward": pa.array(np.zeros(n, np.float32)),
             "demo": pa.array(np.zeros(n, bool))}
    meta = dict(data.schema.metadata or {})
    meta[b"fleetrl.schema_version"] = str(SCHEMA_VERSION).encode()
    cols = [data.column(i) for i in range(data.num_columns)]
    fields = list(data.schema)
    at = names.index("intervention") + 1  # where version 3 puts them (stored segments add stream_seq after)
    for k, name in enumerate(c for c in V3_COLUMNS if c not in names):
        typ = action.type if name == "policy_action" else pa.float32() if name == "human_reward" else pa.bool_()
        cols.insert(at + k, added[name])
        fields.insert(at + k, pa.field(name, typ, nullable=False))
    schema = pa.schema(fields, metadata=meta)
    if isinstance(data, pa.RecordBatch):
        return _add_chunk_index(pa.RecordBatch.from_arrays(cols, schema=schema))
    return _add_chunk_index(pa.Table.from_arrays(cols, schema=schema))


def _add_chunk_index(data: T) -> T:
    """Version 3 rows in version 4's layout: no chunk planned them (null ``chunk_index``, after ``demo``)."""
    names = data.schema.names
    if "chunk_index" in names:
        return data
    at = names.index("demo") + 1  # stored segments add stream_seq after
    meta = dict(data.schema.metadata or {})
    meta[b"fleetrl.schema_version"] = str(SCHEMA_VERSION).encode()
    cols = [data.column(i) for i in range(data.num_columns)]
    fields = list(data.schema)
    cols.insert(at, pa.nulls(data.num_rows, pa.int32()))
    fields.insert(at, pa.field("chunk_index", pa.int32(), nullable=True))
    schema = pa.schema(fields, metadata=meta)
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatch.from_arrays(cols, schema=schema)
    return pa.Table.from_arrays(cols, schema=schema)


def _check_encoded_frames(batch: pa.RecordBatch, spec: EpisodeSpec) -> None:
    """PNG/JPEG frames decode to their field's shape: a bad one found later, after the chunk is stored and
    acked, could only be dropped. Raw frames need no check (their column type fixes their size)."""
    for name in spec.image_fields:
        fs = spec.observation[name]
        if (fs.codec or "raw") == "raw":
            continue
        for prefix in (OBS_PREFIX, NEXT_PREFIX):
            for i, value in enumerate(batch.column(prefix + name).drop_null().to_pylist()):
                try:
                    decode_image(value, fs)
                except SchemaError as e:
                    raise SchemaError(f"column {prefix + name!r}, frame {i}: {e.message}") from None


def _check_consecutive(steps: np.ndarray) -> None:
    if steps.size > 1 and not np.all(np.diff(steps) == 1):
        i = int(np.flatnonzero(np.diff(steps) != 1)[0])
        raise SchemaError(
            f"steps in a chunk with camera fields must be consecutive (frames are stored once); "
            f"step {int(steps[i])} is followed by {int(steps[i + 1])}")


def _check_frames_once(batch: pa.RecordBatch, spec: EpisodeSpec) -> None:
    """Consecutive steps, and each camera's next frame on the last row only: what lets
    row i's next frame be row i+1's frame. O(rows) on the step column, O(1) per camera."""
    n = batch.num_rows
    _check_consecutive(batch.column("step").to_numpy().astype(np.int64))  # no int32 wrap-around
    for name in spec.image_fields:
        col = batch.column(NEXT_PREFIX + name)
        if col.null_count != n - 1 or not col[n - 1].is_valid:
            raise SchemaError(
                f"column {NEXT_PREFIX + name!r} must hold a frame on the chunk's last row only "
                f"(frames are stored once), holds {n - col.null_count} frame(s) in {n} rows"
                + ("" if col[n - 1].is_valid else ", none on the last row"))
        fs = spec.observation[name]
        if (fs.codec or "raw") == "raw" and len(col[n - 1].as_buffer()) != fs.size:
            raise SchemaError(f"column {NEXT_PREFIX + name!r}: the final raw frame has "
                              f"{len(col[n - 1].as_buffer())} bytes, expected {fs.size}")


def single_value(batch: pa.RecordBatch, column: str) -> Any:
    """The one value a per-chunk column holds (robot_id, episode_id)."""
    uniq = batch.column(column).unique()
    if len(uniq) != 1:
        raise SchemaError(f"column {column!r} must hold one value per chunk, holds {len(uniq)}")
    return uniq[0].as_py()


def _schema_diff(got: pa.Schema, expected: pa.Schema) -> str:
    missing = [n for n in expected.names if n not in got.names]
    extra = [n for n in got.names if n not in expected.names]
    if missing or extra:
        return f"chunk schema mismatch: missing {missing}, unexpected {extra}"
    for f in expected:
        g = got.field(f.name)
        # a camera's next-frame column is the only nullable one: v1 robots sent it whole, typed as obs
        hint = " (a chunk of an older fleetrl, schema v1, that sends every next frame)" if f.nullable else ""
        if not g.type.equals(f.type):
            return f"chunk schema mismatch at {f.name!r}: got {g.type}, expected {f.type}{hint}"
        if g.nullable != f.nullable:
            return (f"chunk schema mismatch at {f.name!r}: got a {'nullable' if g.nullable else 'non-nullable'} "
                    f"column, expected a {'nullable' if f.nullable else 'non-nullable'} one{hint}")
    return "chunk schema mismatch: column order differs"
