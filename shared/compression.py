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
    size = _frame_size(data)
    if size > len(data):
        raise CompressionError(f"truncated zstd frame: {len(data)} of {size} bytes")
    if size < len(data):
        raise CompressionError("trailing data after zstd frame")
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


def _frame_size(data: bytes) -> int:
    """Compressed size of the zstd frame at the start of ``data``, from its block headers.

    Lets trailing bytes (even a valid skippable frame) be refused before any work.
    """
    try:
        pos = zstd.frame_header_size(data)
    except zstd.ZstdError as e:
        raise CompressionError(f"bad zstd frame header: {e}") from None
    has_checksum = bool(data[4] & 0x04)
    while True:
        if pos + 3 > len(data):
            return pos + 3  # past the end: the caller reports it truncated
        header = int.from_bytes(data[pos : pos + 3], "little")
        last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
        if btype == 3:
            raise CompressionError("reserved zstd block type")
        pos += 3 + (1 if btype == 1 else bsize)
        if last:
            return pos + (4 if has_checksum else 0)
