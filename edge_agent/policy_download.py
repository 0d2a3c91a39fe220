"""Reassembles a policy sent in parts; survives a cut link (the next hello
asks the cloud to resume from the bytes already here)."""

from __future__ import annotations

from shared.errors import WeightsError
from shared.protocol import Policy


class PolicyDownload:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.version = 0
        self.sha256 = ""
        self.size = 0
        self.buf = bytearray()

    @property
    def partial(self) -> tuple[int, int]:
        """(version, bytes received) to put in the hello."""
        return (self.version, len(self.buf)) if self.version and len(self.buf) < self.size else (0, 0)

    def add(self, part: Policy) -> tuple[int, str, bytes] | None:
        """Take one part; the whole (version, sha256, bytes) once complete, else None."""
        if part.size > self.max_bytes:
            raise WeightsError(f"policy of {part.size} bytes exceeds the limit {self.max_bytes}", code="too_large")
        if (part.version, part.sha256) != (self.version, self.sha256):
            if part.offset != 0:
                raise WeightsError(f"policy v{part.version} resumes at {part.offset} but nothing of it is here")
            self.version, self.sha256, self.size, self.buf = part.version, part.sha256, part.size, bytearray()
        if part.offset != len(self.buf):
            raise WeightsError(f"policy v{part.version} part at {part.offset}, expected {len(self.buf)}")
        self.buf += part.body
        if len(self.buf) < self.size:
            return None
        data, self.buf = bytes(self.buf), bytearray()
        self.version, done = 0, self.version
        return done, self.sha256, data
