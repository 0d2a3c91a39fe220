"""zstd with a hard bound on what decompression may produce (bomb-proof)."""

from __future__ import annotations

import zstandard as zstd

from .errors import CompressionError

DEFAULT_LEVEL = 3


def compress(data: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    # Content size is written into the frame so the reader can refuse early.
    return zstd.ZstdCompressor(level=level, write_content_size=True).compress(data)


def decompress(data: bytes, max_size: int) -> bytes:
    """Decompress one zstd frame, refusing to produce more than ``max_size`` bytes.

    Frames must declare their content size (ours always do), which makes a
    truncated frame detectable and lets a bomb be refused before any work.
    """
    try:
        params = zstd.get_frame_parameters(data)
    except zstd.ZstdError as e:
        raise CompressionError(f"not a zstd frame: {e}") from None
    if params.content_size == zstd.CONTENTSIZE_UNKNOWN:
        raise CompressionError("zstd frame does not declare its content size")
    if params.content_size > max_size:
        raise CompressionError(
            f"declared decompressed size {params.content_size} exceeds limit {max_size}", code="too_large"
        )
    try:
        # A bounded read: the reader never produces more than asked, so an
        # undeclared bomb costs at most max_size + 1 bytes of memory.
        with zstd.ZstdDecompressor().stream_reader(data, read_across_frames=False) as reader:
            out = reader.read(max_size + 1)
            if len(out) > max_size:
                raise CompressionError(f"decompressed size exceeds limit {max_size}", code="too_large")
            eof = reader.read(1) == b""
    except zstd.ZstdError as e:
        raise CompressionError(f"corrupt zstd data: {e}") from None
    if not eof:
        raise CompressionError("trailing data after zstd frame")
    if len(out) != params.content_size:
        raise CompressionError(f"truncated zstd frame: got {len(out)} of {params.content_size} bytes")
    return out
