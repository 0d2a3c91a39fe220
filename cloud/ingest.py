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
from shared.protocol import Chunk, Limits, Lost

from .buffer import ReplayBuffer

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


class Ingest:
    def __init__(self, buffer: ReplayBuffer, limits: Limits, on_durable=None):
        self.buffer, self.limits = buffer, limits
        self.on_durable = on_durable  # called (in the loop) with the number of new rows
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._accepted: dict[str, int] = {}  # highest seq queued per robot (durable or not)
        self._inflight: dict[tuple[str, int], asyncio.Future[None]] = {}
        self.duplicates = 0
        self.chunks = 0
        self.rows = 0
        self.rejected = 0

    def decode(self, robot_id: str, msg: Chunk) -> pa.RecordBatch:
        """Blocking validation of one chunk (run it in a worker thread)."""
        if checksum(msg.body) != msg.crc32:
            raise SchemaError("chunk checksum mismatch", code="bad_checksum")
        assert self.buffer.spec is not None
        batch = decode_chunk(
            msg.body, self.buffer.spec,
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
        seen = max(self._accepted.get(robot_id, 0), self.buffer.hwm(robot_id))
        if last <= seen:  # a resend: store nothing, ack once the original is durable
            self.duplicates += 1
            fut = self._inflight.get((robot_id, last))
            if fut is None:
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(None)
            return fut
        if first != seen + 1:
            # The spool numbers chunks without gaps; a gap means an earlier chunk
            # failed to persist. Refuse, so the robot resends from the durable mark.
            raise SchemaError(f"stream gap: expected seq {seen + 1}, got {first}", code="stream_gap")
        # Claim the seq and its future before awaiting: a resend racing with this
        # validation then waits for the same durable write instead of being acked early.
        self._accepted[robot_id] = last
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[(robot_id, last)] = fut
        if isinstance(msg, Lost):
            item: pa.RecordBatch | Lost = msg
            log.error("event=robot_reported_loss robot_id=%s first=%d last=%d reason=%r", robot_id, first, last, msg.reason)
        else:
            try:
                item = await asyncio.to_thread(self.decode, robot_id, msg)
            except BaseException as e:
                self._accepted[robot_id] = seen
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
                log.error("event=segment_write_failed chunks=%d error=%r", len(group), e)
                for p in group:
                    self._fail(p, e)
                continue
            rows = sum(p.rows for p in group)
            self.chunks += len(group)
            self.rows += rows
            for p in group:
                self._inflight.pop((p.robot_id, p.last), None)
                if not p.done.done():
                    p.done.set_result(None)
            if self.on_durable is not None:
                self.on_durable(rows)
