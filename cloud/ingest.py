"""Ingest: validate, dedupe by (robot id, stream seq), persist in groups, then ack.

Chunks that arrive while a segment is being sealed wait and go into the next
one together (group commit), so the fsync cost is shared under load and the
ack latency stays one write under light load. An ack is only ever sent for
data that is durable.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pyarrow as pa

from shared.chunk import checksum, decode_chunk, single_value
from shared.errors import SchemaError
from shared.lograte import LogLimiter
from shared.protocol import Chunk, Limits, Lost

from .buffer import ReplayBuffer
from .quotas import Quotas

log = logging.getLogger("fleetrl.ingest")


@dataclass
class _Pending:
    robot_id: str
    seq: int  # for a Lost range, its first seq
    item: pa.RecordBatch | Lost
    done: asyncio.Future[None]

    @property
    def last(self) -> int:
        return self.item.last if isinstance(self.item, Lost) else self.seq

    @property
    def rows(self) -> int:
        return 0 if isinstance(self.item, Lost) else self.item.num_rows


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


class Ingest:
    def __init__(self, buffer: ReplayBuffer, limits: Limits, on_durable=None, quotas: Quotas | None = None):
        self.buffer, self.limits = buffer, limits
        self.quotas = quotas or Quotas()  # per robot: disk bytes, segments and loss reports per minute
        self.on_durable = on_durable  # called (in the loop) with the number of new rows
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._accepted: dict[str, int] = {}  # highest seq queued per robot (durable or not)
        self._inflight: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._write_error: dict[str, OSError] = {}  # robots whose last write failed (cleared by a good one)
        self.duplicates = 0
        self.chunks = 0
        self.rows = 0
        self.rejected = 0
        self.write_failures = 0  # segment writes that failed (disk full, I/O error): shown in /status
        self.last_write_error = ""
        self._logs = LogLimiter(1.0)

    @property
    def holding(self) -> bool:
        """True while some robot's last write failed and none has succeeded since (storage hold)."""
        return bool(self._write_error)

    def decode(self, robot_id: str, msg: Chunk) -> pa.RecordBatch:
        """Blocking validation of one chunk (run it in a worker thread)."""
        if checksum(msg.body) != msg.crc32:
            raise SchemaError("chunk checksum mismatch", code="bad_checksum")
        spec = self.buffer.wire_spec(robot_id)
        assert spec is not None
        batch = decode_chunk(
            msg.body, spec,
            max_decompressed=self.limits.max_decompressed_bytes, max_rows=self.limits.max_chunk_rows,
        )
        if single_value(batch, "robot_id") != robot_id:
            raise SchemaError("chunk holds rows of another robot", code="wrong_robot")
        if single_value(batch, "episode_id") != msg.episode_id or batch.num_rows != msg.rows:
            raise SchemaError("chunk header does not match its rows", code="bad_chunk")
        return batch

    async def accept(self, robot_id: str, msg: Chunk | Lost) -> asyncio.Future[None]:
        """Validate and queue one chunk (or a reported loss); the future resolves once durable.

        Call in stream order per robot (one link's messages, one at a time):
        validation is awaited here, durability is not, so a link keeps
        several chunks in the writer's queue at once.
        """
        first, last = (msg.first, msg.last) if isinstance(msg, Lost) else (msg.seq, msg.seq)
        hwm = self.buffer.hwm(robot_id)
        seen = max(self._accepted.get(robot_id, 0), hwm)
        if hwm < last <= seen and (robot_id, last) not in self._inflight:
            # Claimed once but neither durable nor in flight (its write failed, its link went):
            # the durable mark is the truth, or the resend would be acked without being stored.
            seen = self._accepted[robot_id] = hwm
        if last <= seen:  # a resend: store nothing, ack once the original is durable
            self.duplicates += 1
            original = self._inflight.get((robot_id, last))
            if original is None:
                original = asyncio.get_running_loop().create_future()
                original.set_result(None)
            return original
        if first != seen + 1:
            # The spool numbers chunks without gaps; a gap means an earlier chunk
            # failed to persist. Refuse, so the robot resends from the durable mark.
            failed = self._write_error.get(robot_id)
            if failed is not None:  # say the cause (storage), not its symptom
                raise OSError(failed.errno, failed.strerror or str(failed))
            raise SchemaError(f"stream gap: expected seq {seen + 1}, got {first} (an earlier chunk was not stored; "
                              f"the robot resends from seq {seen + 1})", code="stream_gap")
        self.quotas.check(robot_id, msg, self.buffer.robot_bytes(robot_id))  # refused: nothing claimed or stored
        # Claim the seq and its future before awaiting: a resend racing with this
        # validation then waits for the same durable write instead of being acked early.
        self._accepted[robot_id] = last
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)  # its link may be gone when a write fails: never an unretrieved exception
        self._inflight[(robot_id, last)] = fut
        if isinstance(msg, Lost):
            item: pa.RecordBatch | Lost = msg
            log.error("event=robot_reported_loss robot_id=%s first=%d last=%d reason=%r", robot_id, first, last, msg.reason)
        else:
            try:
                item = await asyncio.to_thread(self.decode, robot_id, msg)
            except BaseException as e:
                if self._accepted.get(robot_id) == last:  # still our claim (a failed write may have reset it)
                    self._accepted[robot_id] = first - 1
                self._inflight.pop((robot_id, last), None)
                fut.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
                fut.exception()  # retrieved here; waiters see it too
                raise
        self._queue.put_nowait(_Pending(robot_id, first, item, fut))
        return fut

    def _contiguous(self, items: list[_Pending]) -> list[_Pending]:
        """Keep each robot's chunks that extend its durable mark without a gap.

        After a failed write, chunks queued behind the failed ones must not
        land: the mark would jump over data that is not stored.
        """
        expect = {p.robot_id: self.buffer.hwm(p.robot_id) + 1 for p in items}
        keep = []
        for p in items:
            if p.seq == expect[p.robot_id]:
                keep.append(p)
                expect[p.robot_id] = p.last + 1
            else:
                self._fail(p, SchemaError(f"stream gap at seq {p.seq}", code="stream_gap"))
        return keep

    def _fail(self, p: _Pending, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            self._write_error[p.robot_id] = exc
        self._accepted[p.robot_id] = self.buffer.hwm(p.robot_id)
        self._inflight.pop((p.robot_id, p.last), None)
        if not p.done.done():
            p.done.set_exception(exc)

    async def run_writer(self) -> None:
        """The single writer: drain what is queued, seal it as one segment, resolve."""
        while True:
            group = self._contiguous([await self._queue.get()] + [self._queue.get_nowait() for _ in range(self._queue.qsize())])
            if not group:
                continue
            try:
                await asyncio.to_thread(self.buffer.write, [(p.robot_id, p.seq, p.item) for p in group])
            except Exception as e:  # disk full, I/O error: nothing acked, robots keep their data
                self.write_failures += 1
                self.last_write_error = f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"
                self._logs.log(log, logging.ERROR, ("segment_write_failed", type(e), getattr(e, "errno", None)),
                          "event=segment_write_failed chunks=%d error=%r action=nothing_acked_robots_hold_their_data",
                          len(group), e)
                for p in group:
                    self._fail(p, e)
                continue
            rows = sum(p.rows for p in group)
            self.chunks += len(group)
            self.rows += rows
            self._write_error.clear()  # storage works again
            self.quotas.sealed({p.robot_id for p in group if p.rows})
            for p in group:
                self._inflight.pop((p.robot_id, p.last), None)
                if not p.done.done():
                    p.done.set_result(None)
            if self.on_durable is not None:
                self.on_durable(rows)
