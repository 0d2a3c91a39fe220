"""Policy parts encoded once for every link.

Each robot link sends the newest policy in parts (:class:`shared.protocol.stream.PolicySender`
cuts them on multiples of the part size, so links agree on the spans). The first link to
need a part encodes its frame; every other link sends that same bytes object, so a push
to N robots costs one copy of the blob on the learner, not N (aiohttp writes a large
frame's payload straight to the socket).
"""

from __future__ import annotations

from shared.protocol import MsgType, Policy, encode_frame
from shared.weights import WeightsBlob


class PolicyFrames:
    """Encoded parts of the newest blob asked for; parts of an older one are encoded
    uncached (a link still sending it is cut in by the newer one at its next part)."""

    def __init__(self) -> None:
        self._key: tuple[int, str] = (0, "")
        self._frames: dict[tuple[int, int], bytes] = {}

    def part(self, blob: WeightsBlob, start: int, end: int) -> bytes:
        """The POLICY frame carrying ``blob.data[start:end]``."""
        key = (blob.version, blob.sha256)
        if key != self._key and blob.version >= self._key[0]:
            self._key, self._frames = key, {}  # a newer blob: the older one's frames go
        cached = key == self._key
        frame = self._frames.get((start, end)) if cached else None
        if frame is None:
            body = memoryview(blob.data)[start:end]  # a view: the frame is the one copy
            frame = encode_frame(MsgType.POLICY, Policy(blob.version, blob.sha256, len(blob.data), start).meta(), body)  # type: ignore[arg-type]
            if cached:
                self._frames[(start, end)] = frame
        return frame

    @property
    def cached_bytes(self) -> int:
        return sum(len(f) for f in self._frames.values())
