"""The stream rules of an open link, sans-I/O: which chunk the robot sends next under its
credit, the order the learner acks in, how a policy travels in parts and resumes, and
the learner's per-link message rate.

No sockets, threads, files or clocks: the caller passes the spool's marks, the
publisher's version and the time in, and moves the bytes itself
(``edge_agent.uplink`` and ``cloud.gateway``). That keeps the rules testable without
a network (tests/shared/test_shared_stream.py).
"""

from __future__ import annotations

from collections import deque

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
    cuts in between parts; the cut one is not resumed."""

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
        self.offset = min(start + self.part_bytes, self.size)
        return start, self.offset


class PolicyReceiver:
    """The robot's side: reassembles a policy sent in parts, and survives a cut link
    (:attr:`partial` goes into the next hello so the learner resumes from there)."""

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
            raise WeightsError(f"policy of {part.size} bytes exceeds the limit {self.max_bytes}", code=RejectCode.TOO_LARGE)
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
