"""Size and rate limits every parser enforces; defaults protect a small learner."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int = 64 << 20  # one websocket message
    max_meta_bytes: int = 64 << 10  # the msgpack header of a frame
    max_decompressed_bytes: int = 256 << 20  # one chunk after zstd
    max_chunk_rows: int = 10_000
    max_weights_bytes: int = 1 << 30
    max_inflight_chunks: int = 16  # credit: chunks sent but not yet acked
    max_act_camera_bytes: int = 16 << 20  # camera frames of one act request, decompressed (and on the wire)
