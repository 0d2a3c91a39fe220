"""The spool's record layout, shared by its owner (``spool.py``) and the link process's
read-only view (``link_spool.py``), so both parse segment files the same way.

Record layout: ``magic u32 | len u32 | crc32 u32 | seq u64 | rows u32 |
raw_size u64 | body_crc u32 | episode_id_len u16 | episode_id | body``; the
crc covers everything after it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0xF1EE7A11
PREFIX = struct.Struct("<III")  # magic, length of the rest, crc32 of the rest
MAGIC_BYTES = struct.pack("<I", MAGIC)
FIXED = struct.Struct("<QIQIH")
SUFFIX = ".seg"


@dataclass(frozen=True)
class SpoolRecord:
    seq: int
    episode_id: str
    rows: int
    raw_size: int
    body_crc: int
    body: bytes


@dataclass(frozen=True)
class Loc:
    """Where a record sits: its segment file, byte offset and length."""

    segment: Path
    offset: int
    length: int


def encode_record(seq: int, episode_id: str, rows: int, raw_size: int, body_crc: int, body: bytes) -> bytes:
    eid = episode_id.encode()
    rest = FIXED.pack(seq, rows, raw_size, body_crc, len(eid)) + eid + body
    return PREFIX.pack(MAGIC, len(rest), zlib.crc32(rest)) + rest


def parse_at(data: bytes | memoryview, pos: int) -> tuple[int, int] | None:
    """(seq, record length) of a valid record at ``pos``, else None."""
    if pos + PREFIX.size > len(data):
        return None
    magic, length, crc = PREFIX.unpack_from(data, pos)
    start = pos + PREFIX.size
    if magic != MAGIC or length < FIXED.size or start + length > len(data):
        return None
    if zlib.crc32(data[start : start + length]) != crc:
        return None
    return FIXED.unpack_from(data, start)[0], PREFIX.size + length


def decode_record(data: bytes) -> SpoolRecord:
    """The fields of one whole record already checked by ``parse_at``."""
    rest = data[PREFIX.size :]
    seq, rows, raw_size, body_crc, n = FIXED.unpack_from(rest)
    eid = rest[FIXED.size : FIXED.size + n].decode()
    return SpoolRecord(seq, eid, rows, raw_size, body_crc, rest[FIXED.size + n :])


def complete_but_damaged(data: bytes, pos: int) -> bool:
    """A whole record (by its length) that fails its checksum: damage, not a torn write."""
    if pos + PREFIX.size > len(data):
        return False
    magic, length, _ = PREFIX.unpack_from(data, pos)
    return magic == MAGIC and pos + PREFIX.size + length == len(data)


def resync(data: bytes, start: int) -> int | None:
    """Offset of the next valid record at or after ``start``, past damaged bytes."""
    i = data.find(MAGIC_BYTES, start)
    while i != -1:
        if parse_at(data, i) is not None:
            return i
        i = data.find(MAGIC_BYTES, i + 1)
    return None
