"""Messages between the control process and the link process, over a socketpair.

Each message is a length-prefixed JSON array ``[kind, payload]`` (plain data:
the config travels as its JSON form, nothing is unpickled). Sending never waits (the control process must not
block on a stalled link process): what cannot go out yet queues in the stream's
buffer.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

_LEN = struct.Struct("<I")
MAX_MESSAGE = 64 << 20  # the hello carries the config and the spool's lost ranges, nothing big


class Channel:
    """One end of the pipe: :meth:`send` without waiting, :meth:`receive` in a loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def send(self, kind: str, payload: Any = None) -> bool:
        """Queue a message; False when the other end is gone."""
        if self.writer.is_closing():
            return False
        data = json.dumps([kind, payload], separators=(",", ":")).encode()
        self.writer.write(_LEN.pack(len(data)) + data)
        return True

    async def receive(self) -> tuple[str, Any] | None:
        """The next message, or None once the other end closed."""
        try:
            head = await self.reader.readexactly(_LEN.size)
            (n,) = _LEN.unpack(head)
            if n > MAX_MESSAGE:
                raise ValueError(f"link message of {n} bytes")
            kind, payload = json.loads(await self.reader.readexactly(n))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return kind, payload

    def close(self) -> None:
        self.writer.close()


async def open_channel(sock: Any) -> Channel:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
    return Channel(reader, writer)
