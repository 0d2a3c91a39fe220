"""A small state record that can be rewritten even on a full disk.

The file is allocated once with two fixed slots; each write goes, in place,
to the slot not holding the newest state, with a generation number and a
checksum, then fsync. A torn write spoils only the slot being written; the
reader takes the valid slot with the highest generation. No write after
creation allocates a block, so acking (and with it freeing spool space)
works when the disk is full.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

SLOT = 4096
_HEAD = struct.Struct("<QII")  # generation, payload length, crc32(payload)


class StateSlots:
    def __init__(self, path: Path, fsync: bool = True):
        self.path, self.fsync = Path(path), fsync
        self.generation = 0
        if not self.path.exists():
            with open(self.path, "wb") as fh:
                fh.write(b"\0" * (2 * SLOT))
                fh.flush()
                os.fsync(fh.fileno())
        else:
            self.read()  # learn the newest generation: a first write must not land under an older slot

    def read(self) -> dict[str, Any]:
        data = self.path.read_bytes()
        best: tuple[int, dict[str, Any]] = (0, {})
        for i in range(2):
            slot = data[i * SLOT : (i + 1) * SLOT]
            if len(slot) < _HEAD.size:
                continue
            gen, n, crc = _HEAD.unpack_from(slot)
            payload = slot[_HEAD.size : _HEAD.size + n]
            if gen and len(payload) == n and zlib.crc32(payload) == crc and gen > best[0]:
                best = (gen, json.loads(payload))
        self.generation = best[0]
        return best[1]

    def write(self, state: dict[str, Any]) -> None:
        payload = json.dumps(state, separators=(",", ":")).encode()
        if _HEAD.size + len(payload) > SLOT:
            raise ValueError(f"state of {len(payload)} bytes does not fit a {SLOT}-byte slot")
        self.generation += 1
        record = _HEAD.pack(self.generation, len(payload), zlib.crc32(payload)) + payload
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, record, (self.generation % 2) * SLOT)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
