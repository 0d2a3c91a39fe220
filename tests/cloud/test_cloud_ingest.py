"""Ingest with a real ReplayBuffer on disk: validation, dedupe, group commit, write failures."""

from __future__ import annotations

import asyncio
import errno
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from cloud.buffer import ReplayBuffer
from cloud.ingest import Ingest
from harness.waits import until
from shared.chunk import StepRecord, build_batch, checksum, encode_chunk
from shared.errors import SchemaError
from shared.protocol import Chunk, Limits
from shared.schema import EpisodeSpec, FieldSpec

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,))}, action_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0))
ROWS = 4


def _chunk(robot: str, seq: int, rows: int = ROWS, episode: str | None = None, rows_robot: str | None = None) -> Chunk:
    eid = episode or f"ep-{robot}"
    steps = [
        StepRecord({"pos": np.full(3, seq * 100 + i, np.float32)}, np.zeros(2, np.float32), float(i),
                   {"pos": np.full(3, seq * 100 + i + 1, np.float32)}, False, False, step=(seq - 1) * rows + i)
        for i in range(rows)
    ]
    batch = build_batch(SPEC, rows_robot or robot, eid, steps)
    body = encode_chunk(batch)
    return Chunk(seq, eid, rows, batch.nbytes, checksum(body), body)


def _stored(buf: ReplayBuffer) -> list[tuple[str, int]]:
    """(robot, seq) of every stored row, read back from the Parquet files."""
    out = []
    for path in buf.segment_paths():
        t = pq.read_table(path, columns=["robot_id", "stream_seq"])
        out += list(zip(t.column("robot_id").to_pylist(), t.column("stream_seq").to_pylist()))
    return out


@pytest.fixture
def buf(tmp_path) -> ReplayBuffer:
    b = ReplayBuffer(tmp_path / "buffer", 10_000)
    b.check_spec(SPEC)
    return b


class _Writer:
    def __init__(self, ingest: Ingest):
        self.ingest = ingest
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.ingest.run_writer())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def ingest(buf):
    durable: list[int] = []
    ing = Ingest(buf, Limits(), on_durable=durable.append)
    ing.durable_calls = durable  # type: ignore[attr-defined]
    w = _Writer(ing)
    ing.writer = w  # type: ignore[attr-defined]
    yield ing
    await w.stop()


async def _wait(futs, timeout=10.0):
    return await asyncio.wait_for(asyncio.gather(*futs), timeout)


async def test_accepted_chunks_become_durable_and_futures_resolve(ingest, buf, tmp_path):
    ingest.writer.start()
    futs = [await ingest.accept("r1", _chunk("r1", s)) for s in range(1, 6)]
    await _wait(futs)
    assert all(f.done() and f.exception() is None for f in futs)
    assert buf.hwm("r1") == 5
    assert ingest.chunks == 5 and ingest.rows == 5 * ROWS
    assert sum(ingest.durable_calls) == 5 * ROWS
    assert sorted(_stored(buf)) == [("r1", s) for s in range(1, 6) for _ in range(ROWS)]
    # durable means: a fresh buffer on the same directory sees it all
    again = ReplayBuffer(tmp_path / "buffer", 10_000)
    assert again.rows == 5 * ROWS and again.hwm("r1") == 5 and again.size == 5 * ROWS


async def test_queued_chunks_are_committed_together(ingest, buf):
    futs = [await ingest.accept("r1", _chunk("r1", s)) for s in range(1, 4)]
    futs += [await ingest.accept("r2", _chunk("r2", s)) for s in range(1, 3)]
    assert not any(f.done() for f in futs)  # nothing is durable before the writer runs
    ingest.writer.start()
    await _wait(futs)
    assert len(buf.segments()) == 1  # one group commit
    assert buf.segments()[0].robots == {"r1": [1, 3, 3 * ROWS], "r2": [1, 2, 2 * ROWS]}
    assert (buf.hwm("r1"), buf.hwm("r2")) == (3, 2)


async def test_duplicate_of_a_durable_chunk_stores_nothing_and_resolves(ingest, buf):
    ingest.writer.start()
    await _wait([await ingest.accept("r1", _chunk("r1", s)) for s in (1, 2)])
    rows = buf.rows
    for s in (1, 2, 1):
        fut = await ingest.accept("r1", _chunk("r1", s))
        assert fut.done() and fut.exception() is None
    # a later chunk made durable proves the writer drained everything queued before it
    await _wait([await ingest.accept("r1", _chunk("r1", 3))])
    assert buf.rows == rows + ROWS and ingest.duplicates == 3
    assert sorted(set(_stored(buf))) == [("r1", 1), ("r1", 2), ("r1", 3)] and len(_stored(buf)) == 3 * ROWS


async def test_duplicate_after_restart_is_known_from_the_manifest(buf, tmp_path):
    ing = Ingest(buf, Limits())
    w = _Writer(ing)
    w.start()
    await _wait([await ing.accept("r1", _chunk("r1", s)) for s in (1, 2, 3)])
    await w.stop()
    buf2 = ReplayBuffer(tmp_path / "buffer", 10_000)
    ing2 = Ingest(buf2, Limits())
    w2 = _Writer(ing2)
    w2.start()
    try:
        fut = await ing2.accept("r1", _chunk("r1", 2))
        assert fut.done()
        await _wait([await ing2.accept("r1", _chunk("r1", 4))])
        with pytest.raises(SchemaError) as ei:
            await ing2.accept("r1", _chunk("r1", 6))
        assert ei.value.code == "stream_gap"
    finally:
        await w2.stop()
    assert sorted(set(_stored(buf2))) == [("r1", s) for s in (1, 2, 3, 4)]


async def test_duplicate_while_in_flight_resolves_after_the_original(ingest, buf):
    original = await ingest.accept("r1", _chunk("r1", 1))
    dup = await ingest.accept("r1", _chunk("r1", 1))
    assert not original.done() and not dup.done()  # not acked before it is durable
    ingest.writer.start()
    await _wait([dup])
    assert original.done() and buf.hwm("r1") == 1
    assert len(_stored(buf)) == ROWS


async def test_resend_during_validation_is_not_acked_before_durable(ingest, buf):
    c = _chunk("r1", 1)
    original, dup = await asyncio.gather(ingest.accept("r1", c), ingest.accept("r1", c))
    assert buf.hwm("r1") == 0
    assert not dup.done(), "the resend was acked while nothing is durable yet"


async def test_gap_is_refused_and_stream_continues(ingest, buf):
    ingest.writer.start()
    await _wait([await ingest.accept("r1", _chunk("r1", 1))])
    with pytest.raises(SchemaError) as ei:
        await ingest.accept("r1", _chunk("r1", 3))
    assert ei.value.code == "stream_gap"
    with pytest.raises(SchemaError) as ei:
        await ingest.accept("r2", _chunk("r2", 2))  # a new robot starts at 1
    assert ei.value.code == "stream_gap"
    await _wait([await ingest.accept("r1", _chunk("r1", s)) for s in (2, 3)])
    assert buf.hwm("r1") == 3 and buf.hwm("r2") == 0


async def test_bad_checksum_is_refused_and_the_seq_stays_free(ingest, buf):
    ingest.writer.start()
    good = _chunk("r1", 1)
    bad = Chunk(good.seq, good.episode_id, good.rows, good.raw_size, (good.crc32 + 1) & 0xFFFFFFFF, good.body)
    with pytest.raises(SchemaError) as ei:
        await ingest.accept("r1", bad)
    assert ei.value.code == "bad_checksum"
    flipped = bytearray(good.body)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(SchemaError) as ei:
        await ingest.accept("r1", Chunk(1, good.episode_id, good.rows, good.raw_size, good.crc32, bytes(flipped)))
    assert ei.value.code == "bad_checksum"
    assert buf.rows == 0
    await _wait([await ingest.accept("r1", good)])  # the resend of the right bytes lands
    assert buf.hwm("r1") == 1 and buf.rows == ROWS


async def test_rows_of_another_robot_are_refused(ingest, buf):
    ingest.writer.start()
    with pytest.raises(SchemaError) as ei:
        await ingest.accept("r1", _chunk("r1", 1, rows_robot="r2"))
    assert ei.value.code == "wrong_robot"
    assert buf.rows == 0
    await _wait([await ingest.accept("r1", _chunk("r1", 1))])
    assert buf.rows_by_robot == {"r1": ROWS}


async def test_header_not_matching_rows_is_refused(ingest, buf):
    c = _chunk("r1", 1)
    for bad in (Chunk(1, c.episode_id, c.rows + 1, c.raw_size, c.crc32, c.body),
                Chunk(1, "another-episode", c.rows, c.raw_size, c.crc32, c.body)):
        with pytest.raises(SchemaError) as ei:
            await ingest.accept("r1", bad)
        assert ei.value.code == "bad_chunk"


async def test_body_that_is_not_a_chunk_is_refused(ingest, buf):
    body = b"definitely not zstd"
    with pytest.raises(Exception) as ei:
        await ingest.accept("r1", Chunk(1, "e", 1, 1, checksum(body), body))
    assert getattr(ei.value, "code", None) in {"bad_compression", "bad_schema"}
    other = EpisodeSpec(observation={"pos": FieldSpec((4,))}, action_dim=2)
    steps = [StepRecord({"pos": np.zeros(4, np.float32)}, np.zeros(2, np.float32), 0.0,
                        {"pos": np.zeros(4, np.float32)}, False, False)]
    body = encode_chunk(build_batch(other, "r1", "e", steps))
    with pytest.raises(SchemaError):
        await ingest.accept("r1", Chunk(1, "e", 1, 1, checksum(body), body))
    await asyncio.wait_for(ingest.accept("r1", _chunk("r1", 1)), 5)  # seq 1 still free


def _fail_writes(monkeypatch, buf: ReplayBuffer, times: int, gate: threading.Event | None = None):
    """Fault injection at the OS boundary: the segment write hits a full disk."""
    real = buf.store.write_segment
    state = {"left": times, "calls": 0}

    def write_segment(*args, **kwargs):
        state["calls"] += 1
        if state["left"] > 0:
            state["left"] -= 1
            if gate is not None:
                gate.wait(10)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(buf.store, "write_segment", write_segment)
    return state


async def test_write_failure_fails_futures_and_resend_lands_exactly_once(ingest, buf, monkeypatch, tmp_path):
    _fail_writes(monkeypatch, buf, 1)
    futs = [await ingest.accept("r1", _chunk("r1", s)) for s in (1, 2, 3)]
    ingest.writer.start()
    results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
    assert all(isinstance(r, OSError) and r.errno == errno.ENOSPC for r in results)
    assert buf.hwm("r1") == 0 and buf.rows == 0 and ingest.chunks == 0
    # the robot resends from the durable mark (0)
    await _wait([await ingest.accept("r1", _chunk("r1", s)) for s in (1, 2, 3)])
    await _wait([await ingest.accept("r1", _chunk("r1", 4))])
    assert buf.hwm("r1") == 4
    stored = _stored(buf)
    assert sorted(stored) == [("r1", s) for s in (1, 2, 3, 4) for _ in range(ROWS)]
    again = ReplayBuffer(tmp_path / "buffer", 10_000)
    assert again.rows == 4 * ROWS and again.rows_by_robot == {"r1": 4 * ROWS}


async def test_chunks_queued_behind_a_failed_write_are_refused_not_stored(ingest, buf, monkeypatch):
    gate = threading.Event()
    state = _fail_writes(monkeypatch, buf, 1, gate)
    ingest.writer.start()
    f1 = await ingest.accept("r1", _chunk("r1", 1))
    await until(lambda: state["calls"], "the writer inside the (blocked) failing write")
    assert state["calls"] == 1
    f2 = await ingest.accept("r1", _chunk("r1", 2))
    f_other = await ingest.accept("r2", _chunk("r2", 1))  # another robot is not affected
    gate.set()
    r = await asyncio.wait_for(asyncio.gather(f1, f2, f_other, return_exceptions=True), 10)
    assert isinstance(r[0], OSError)
    assert isinstance(r[1], SchemaError) and r[1].code == "stream_gap"
    assert r[2] is None
    assert buf.hwm("r1") == 0 and buf.hwm("r2") == 1
    # resend from the durable mark: everything lands exactly once
    await _wait([await ingest.accept("r1", _chunk("r1", s)) for s in (1, 2)])
    assert sorted(_stored(buf)) == sorted([("r1", s) for s in (1, 2) for _ in range(ROWS)] + [("r2", 1)] * ROWS)


async def test_reported_loss_moves_the_mark_without_rows(ingest, buf, tmp_path):
    from shared.protocol import Lost

    ingest.writer.start()
    await _wait([await ingest.accept("r1", _chunk("r1", 1))])
    await _wait([await ingest.accept("r1", Lost(2, 3, "bad sector"))])  # a loss on its own
    assert buf.hwm("r1") == 3 and buf.rows == ROWS
    await _wait([await ingest.accept("r1", _chunk("r1", 4))])
    assert buf.hwm("r1") == 4
    dup = await ingest.accept("r1", Lost(2, 3, "bad sector"))  # resent after a reconnect
    assert dup.done()
    with pytest.raises(SchemaError) as ei:
        await ingest.accept("r1", Lost(6, 7, "x"))
    assert ei.value.code == "stream_gap"
    assert sorted(set(_stored(buf))) == [("r1", 1), ("r1", 4)]
    again = ReplayBuffer(tmp_path / "buffer", 10_000)
    assert again.hwm("r1") == 4 and again.rows == 2 * ROWS
    assert [(x["robot_id"], x["first"], x["last"]) for x in again.lost()] == [("r1", 2, 3)]
