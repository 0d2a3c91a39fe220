"""The stream rules of an open link, sans-I/O: which chunk the robot sends next under its
credit, the order the learner acks in, how a policy travels in parts and resumes, and
the learner's per-link message rate.

No sockets, threads, files or clocks: the caller passes the spool's marks, the
publisher's version and the time in, and moves the bytes itself
(``edge_agent.uplink`` and ``cloud.gateway``). That keeps the rules testable without
a network (tests/shared/test_shared_stream.py).
"""

from __future__ import annotations

import hashlib
import mmap
from collections import deque
from typing import Callable

from ..errors import ProtocolError, WeightsError
from .codes import RejectCode
from .messages import Policy

POLICY_PART_BYTES = 4 << 20  # one Policy frame: acks and commands overtake a large blob between parts


class UploadWindow:
    """The robot's send side: chunks ``acked+1 ..`` go out in order, at most ``credit``
    past the durable mark; a lost range is reported once in place of its chunks.

    ``acked`` follows the spool's durable mark (an ack frees credit only once the spool
    has forgotten the chunk), ``received`` the highest ack the learner sent."""

    def __init__(self, acked: int, credit: int):
        if credit < 1:
            raise ValueError(f"credit must be at least 1, got {credit}")
        self.acked, self.credit = acked, credit
        self.next_seq = acked + 1
        self.received = acked

    def next(self, limit_seq: int, acked: int) -> int | None:
        """The seq to send now, or None while the window is full or nothing past
        ``limit_seq`` (the spool's last recorded seq) is there; ``acked`` is the spool's mark."""
        self.acked = max(self.acked, acked)
        self.next_seq = max(self.next_seq, self.acked + 1)
        if self.next_seq <= limit_seq and self.next_seq - self.acked - 1 < self.credit:
            return self.next_seq
        return None

    def sent(self, last: int) -> None:
        """A chunk (``last`` = its seq) or a lost range ``..last`` went out."""
        if last < self.next_seq:
            raise ValueError(f"seq {last} was already sent (next is {self.next_seq})")
        self.next_seq = last + 1

    def ack(self, seq: int) -> bool:
        """An ack arrived; True when it moves the mark (it still has to be made durable)."""
        if seq <= self.received:
            return False
        self.received = seq
        return True

    @property
    def inflight(self) -> int:
        return self.next_seq - self.acked - 1


class AckOrder:
    """The learner's ack side: chunks (and lost ranges) are acked in the order they
    arrived, each once its write is durable, so an ack never covers a hole.

    A robot may have at most ``allowance`` of them unacked: twice its credit, since the
    robot counts credit from its own durable mark, which lags the acks sent."""

    def __init__(self, max_inflight: int):
        self.allowance = 2 * max_inflight
        self._order: deque[int] = deque()  # last seq of each accepted message, in arrival order
        self._durable: set[int] = set()
        self.acked = 0

    def accept(self, last_seq: int) -> None:
        """A chunk (or a lost range ending at ``last_seq``) goes to storage; a robot past its credit is refused."""
        if len(self._order) >= self.allowance:
            raise ProtocolError("robot ignores its credit window", RejectCode.TOO_MANY_INFLIGHT)
        self._order.append(last_seq)

    def durable(self, last_seq: int) -> int | None:
        """The write of ``last_seq`` is durable: the seq to ack now (the end of the run of
        durable writes at the front), or None while an earlier one is still being written."""
        if last_seq not in self._order:
            raise ValueError(f"seq {last_seq} was not accepted or is already acked")
        self._durable.add(last_seq)
        release = None
        while self._order and self._order[0] in self._durable:
            release = self._order.popleft()
            self._durable.discard(release)
        if release is not None:
            self.acked = release
        return release

    @property
    def pending(self) -> int:
        return len(self._order)


class PolicySender:
    """Which bytes of which policy the learner sends next on one link.

    Starts from the robot's hello: the version it runs (``have``) and a partial
    download to resume (``partial`` = (version, bytes)). A newer published version
    cuts in between parts; the cut one is not resumed. Parts end on multiples of
    ``part_bytes`` (a resume's first part is shorter), so every link sends the
    same spans and the learner encodes each once."""

    def __init__(self, have: int, partial: tuple[int, int] = (0, 0), part_bytes: int = POLICY_PART_BYTES):
        if part_bytes < 1:
            raise ValueError(f"part_bytes must be at least 1, got {part_bytes}")
        self.have, self.part_bytes = have, part_bytes
        self._resume = partial
        self.version, self.size, self.offset = 0, 0, 0

    def begin(self, version: int, size: int) -> int:
        """Start sending ``version`` (``size`` bytes); the offset it starts at (a resume, or 0)."""
        v, got = self._resume
        self.offset = got if v == version and got < size else 0
        self._resume = (0, 0)  # a resume point holds for the first blob only
        self.version, self.size = version, size
        return self.offset

    def next_part(self, latest: int) -> tuple[int, int] | None:
        """(start, end) of the next part, or None: the blob is whole (``have`` moves to
        it) or ``latest``, the newest published version, has cut in."""
        if self.offset >= self.size:
            self.have = max(self.have, self.version)
            return None
        if latest != self.version:
            return None
        start = self.offset
        self.offset = min((start // self.part_bytes + 1) * self.part_bytes, self.size)  # on the grid every link shares
        return start, self.offset


class PolicyReceiver:
    """The robot's side: reassembles a policy sent in parts, and survives a cut link
    (:attr:`partial` goes into the next hello so the learner resumes from there).

    The parts go into one buffer allocated at the first part (its size is announced,
    and bounded by ``max_bytes``) and are hashed as they arrive, so the whole blob is
    never copied and its digest is ready when the last part lands (hashlib releases
    the GIL on large parts). ``buffers`` supplies that buffer (the robot's link process
    maps a file, :class:`edge_agent.policy_download.PolicyFiles`, so the whole blob is
    already where the control process maps it); by default it is anonymous memory."""

    def __init__(self, max_bytes: int, buffers: Callable[[int, int], memoryview] | None = None):
        self.max_bytes = max_bytes
        self.buffers = buffers or _anonymous  # (version, size) -> a writable buffer of that size
        self.version = 0
        self.sha256 = ""
        self.size = 0
        self.got = 0
        self.buf = memoryview(bytearray())
        self._hash = hashlib.sha256()

    @property
    def partial(self) -> tuple[int, int]:
        """(version, bytes received) to put in the hello."""
        return (self.version, self.got) if self.version and self.got < self.size else (0, 0)

    def add(self, part: Policy) -> tuple[int, str, memoryview] | None:
        """Take one part; once complete, ``(version, sha256, data)`` with the digest verified
        (else WeightsError ``bad_digest``) and ``data`` the receiver's buffer, handed over
        (a writable memoryview: decode it without a copy); None while parts are missing."""
        if part.size > self.max_bytes:
            raise WeightsError(f"policy of {part.size} bytes exceeds the limit {self.max_bytes}", code=RejectCode.TOO_LARGE)
        other = (part.version, part.sha256, part.size) != (self.version, self.sha256, self.size)
        if part.offset == 0 and (other or self.got):  # a blob starting (or starting over) from its first byte
            self._reset(part.version, part.sha256, part.size)
        elif other:
            raise WeightsError(f"policy v{part.version} resumes at {part.offset} but nothing of it is here")
        if part.offset != self.got:
            raise WeightsError(f"policy v{part.version} part at {part.offset}, expected {self.got}")
        end = self.got + len(part.body)
        if end > self.size:
            raise WeightsError(f"policy v{part.version} part ends at {end}, past its size {self.size}")
        self.buf[self.got : end] = part.body
        self._hash.update(part.body)
        self.got = end
        if self.got < self.size:
            return None
        done, digest, data = self.version, self._hash.hexdigest(), self.buf
        self._reset(0, "", 0)
        if digest != part.sha256:
            raise WeightsError(f"policy v{done} sha256 does not match the announced digest", code="bad_digest")
        return done, part.sha256, data

    def _reset(self, version: int, sha256: str, size: int) -> None:
        self.version, self.sha256, self.size, self.got = version, sha256, size, 0
        self.buf = self.buffers(version, size) if sha256 else memoryview(bytearray())
        self._hash = hashlib.sha256()


def _anonymous(version: int, size: int) -> memoryview:
    # Zero pages from the OS, touched only as parts land (a bytearray would be memset
    # whole, holding the GIL for half a second at 400 MB).
    return memoryview(mmap.mmap(-1, size) if size else bytearray())


class RateLimit:
    """Token bucket: ``rate`` messages per second, bursts of two seconds' worth.
    The caller passes the time (a monotonic clock, in seconds)."""

    def __init__(self, rate: float, now: float):
        self.rate, self.tokens, self.t = rate, 2 * rate, now

    def take(self, now: float) -> bool:
        """Spend one token; False (nothing spent) when the bucket is empty."""
        self.tokens = min(2 * self.rate, self.tokens + max(0.0, now - self.t) * self.rate)
        self.t = max(self.t, now)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def admit(self, now: float) -> None:
        """:meth:`take`, refusing the link when the robot sends too fast."""
        if not self.take(now):
            raise ProtocolError(f"more than {self.rate:g} messages per second", RejectCode.RATE_LIMITED)
