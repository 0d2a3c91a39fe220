"""The learner app on a real loopback socket, spoken to by a real websockets client."""

from __future__ import annotations

import asyncio
import errno
import json

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from cloud.app import make_app
from cloud.buffer import ReplayBuffer
from cloud.keys import BUFFER
from shared.chunk import StepRecord, build_batch, checksum, encode_chunk
from shared.config import LearnerConfig
from shared.protocol import Ack, EdgeConnection, Reject, Welcome
from shared.schema import EpisodeSpec, FieldSpec

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((3,))}, action_dim=4,
                   action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
OTHER = EpisodeSpec(observation={"pos": FieldSpec((7,))}, action_dim=4)
ROWS = 5
TIMEOUT = 10.0


def _chunk_args(robot: str, seq: int, spec: EpisodeSpec = SPEC) -> tuple:
    eid = f"{robot}-ep"
    steps = [
        StepRecord({k: np.full(f.shape, seq + i / 10, np.float32) for k, f in spec.observation.items()},
                   np.zeros(spec.action_dim, np.float32), 0.5,
                   {k: np.full(f.shape, seq + (i + 1) / 10, np.float32) for k, f in spec.observation.items()},
                   False, False, step=(seq - 1) * ROWS + i)
        for i in range(ROWS)
    ]
    batch = build_batch(spec, robot, eid, steps)
    body = encode_chunk(batch)
    return seq, eid, ROWS, batch.nbytes, checksum(body), body


@pytest.fixture
async def server(tmp_path):
    cfg = LearnerConfig(
        data_dir=tmp_path / "run",
        server={"host": "127.0.0.1", "port": 0},
        learner={"learning_starts": 10**9, "hidden": [16, 16], "batch_size": 8},
    )
    app = make_app(cfg)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield app, f"ws://{host}:{port}/ws", f"http://{host}:{port}/status"
    await runner.cleanup()


class Robot:
    """A minimal robot end: the real EdgeConnection over a real websocket."""

    def __init__(self, url: str, robot_id: str, spec: EpisodeSpec = SPEC):
        self.url, self.robot_id, self.spec = url, robot_id, spec
        self.ws = None
        self.conn: EdgeConnection | None = None

    async def open(self):
        self.conn = EdgeConnection(self.robot_id, self.spec.to_dict(), [{"name": "arm"}])
        self.ws = await connect(self.url, compression=None, open_timeout=TIMEOUT)
        await self.ws.send(self.conn.hello(0))
        return await self.recv()

    async def recv(self):
        data = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        return self.conn.receive(data)

    async def send_chunk(self, seq: int) -> None:
        await self.ws.send(self.conn.chunk(*_chunk_args(self.robot_id, seq, self.spec)))

    async def acks(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            msg = await self.recv()
            assert isinstance(msg, Ack), msg
            out.append(msg.seq)
        return out

    async def closed(self) -> bool:
        try:
            await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        except ConnectionClosed:
            return True
        return False

    async def close(self):
        if self.ws is not None:
            await self.ws.close()


async def _status(url: str) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            return await r.json()


def _stored_rows(app) -> int:
    return app[BUFFER].rows


async def test_handshake_chunks_acks_reconnect_and_resend(server):
    app, url, status_url = server
    r = Robot(url, "robot-a")
    welcome = await r.open()
    assert isinstance(welcome, Welcome)
    assert welcome.acked_seq == 0 and welcome.version == 1 and welcome.max_inflight >= 1
    assert welcome.run_id == app[BUFFER].run_id
    for s in (1, 2, 3):
        await r.send_chunk(s)
    assert await r.acks(3) == [1, 2, 3]
    assert _stored_rows(app) == 3 * ROWS
    await r.close()

    r2 = Robot(url, "robot-a")
    welcome = await r2.open()
    assert isinstance(welcome, Welcome) and welcome.acked_seq == 3
    for s in (2, 3, 4):  # a resend of what the robot did not see acked, then new data
        await r2.send_chunk(s)
    assert await r2.acks(3) == [2, 3, 4]
    assert _stored_rows(app) == 4 * ROWS  # the resends were not stored twice
    st = await _status(status_url)
    assert st["rows_by_robot"] == {"robot-a": 4 * ROWS}
    assert st["hwm"] == {"robot-a": 4}
    assert st["buffer_rows"] == 4 * ROWS
    assert st["ingest"]["duplicates"] == 2
    assert "robot-a" in st["robots"]
    await r2.close()


async def test_status_on_an_empty_learner(server):
    _, _, status_url = server
    st = await _status(status_url)
    assert st["rows_by_robot"] == {} and st["buffer_rows"] == 0 and st["robots"] == {}
    json.dumps(st)  # plain JSON all the way down


async def test_gap_is_rejected_and_the_link_closes(server):
    app, url, _ = server
    r = Robot(url, "robot-a")
    await r.open()
    await r.send_chunk(1)
    assert await r.acks(1) == [1]
    await r.send_chunk(3)
    msg = await r.recv()
    assert isinstance(msg, Reject) and msg.code == "stream_gap"
    assert await r.closed()
    r2 = Robot(url, "robot-a")
    assert (await r2.open()).acked_seq == 1
    await r2.send_chunk(2)
    assert await r2.acks(1) == [2]
    await r2.close()


async def test_spec_mismatch_from_a_second_robot_is_rejected(server):
    app, url, _ = server
    a = Robot(url, "robot-a")
    await a.open()
    b = Robot(url, "robot-b", spec=OTHER)
    msg = await b.open()
    assert isinstance(msg, Reject) and msg.code == "spec_mismatch"
    assert await b.closed()
    await a.send_chunk(1)  # the first robot is unaffected
    assert await a.acks(1) == [1]
    await a.close()


@pytest.mark.parametrize(
    "garbage, code",
    [
        (b"\x00garbage bytes", "bad_magic"),
        (b"FL\x01\x03" + b"\xff" * 40, "frame_too_large"),
        (b"FL\x01\x03" + bytes(8), "bad_meta"),
        (b"FL\x09\x03" + bytes(8), "unsupported_version"),
        (b"FL\x01\x63" + bytes(8), "unknown_type"),
        (b"FL", "truncated"),
    ],
)
async def test_garbage_is_rejected_with_a_code_and_others_keep_working(server, garbage, code):
    app, url, status_url = server
    a = Robot(url, "robot-a")
    await a.open()
    await a.send_chunk(1)
    assert await a.acks(1) == [1]

    b = Robot(url, "robot-b")
    await b.open()
    await b.ws.send(garbage)
    msg = await b.recv()
    assert isinstance(msg, Reject)
    assert msg.code == code
    assert msg.message
    assert await b.closed()

    await a.send_chunk(2)
    assert await a.acks(1) == [2]
    st = await _status(status_url)
    assert st["rows_by_robot"] == {"robot-a": 2 * ROWS}
    assert "robot-b" not in st["robots"]
    await a.close()


async def test_garbage_before_hello_is_rejected(server):
    _, url, _ = server
    ws = await connect(url, compression=None, open_timeout=TIMEOUT)
    await ws.send(b"not a frame at all")
    conn = EdgeConnection("x", SPEC.to_dict(), [])
    conn.hello(0)  # the client's state machine expects a welcome or a reject now
    msg = conn.receive(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert isinstance(msg, Reject) and msg.code == "bad_magic"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)


async def test_text_frame_is_rejected(server):
    _, url, _ = server
    r = Robot(url, "robot-a")
    await r.open()
    await r.ws.send("hello as text")
    msg = await r.recv()
    assert isinstance(msg, Reject) and msg.code == "bad_frame"
    assert await r.closed()


async def test_bad_chunk_checksum_is_rejected(server):
    app, url, _ = server
    r = Robot(url, "robot-a")
    await r.open()
    seq, eid, rows, raw, crc, body = _chunk_args("robot-a", 1)
    await r.ws.send(r.conn.chunk(seq, eid, rows, raw, crc ^ 1, body))
    msg = await r.recv()
    assert isinstance(msg, Reject) and msg.code == "bad_checksum"
    assert await r.closed()
    assert _stored_rows(app) == 0


async def test_chunk_of_another_robot_is_rejected(server):
    app, url, _ = server
    r = Robot(url, "robot-a")
    await r.open()
    await r.ws.send(r.conn.chunk(*_chunk_args("robot-z", 1)))
    msg = await r.recv()
    assert isinstance(msg, Reject) and msg.code == "wrong_robot"
    assert _stored_rows(app) == 0


async def test_newer_link_of_the_same_robot_replaces_the_older(server):
    app, url, _ = server
    old = Robot(url, "robot-a")
    await old.open()
    await old.send_chunk(1)
    assert await old.acks(1) == [1]
    new = Robot(url, "robot-a")
    welcome = await new.open()
    assert isinstance(welcome, Welcome) and welcome.acked_seq == 1
    assert await old.closed()
    await new.send_chunk(2)
    assert await new.acks(1) == [2]
    assert _stored_rows(app) == 2 * ROWS
    await new.close()


async def test_storage_failure_holds_the_robot_and_resend_lands_once(server, monkeypatch):
    """Fault injection at the OS boundary: the segment write hits a full disk once."""
    app, url, status_url = server
    store = app[BUFFER].store
    real = store.write_segment
    failures = {"left": 1}

    def write_segment(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "write_segment", write_segment)
    r = Robot(url, "robot-a")
    await r.open()
    await r.send_chunk(1)
    msg = await r.recv()
    assert isinstance(msg, Reject) and msg.code == "hold"  # never an ack for data that is not durable
    assert await r.closed()
    assert _stored_rows(app) == 0

    r2 = Robot(url, "robot-a")
    assert (await r2.open()).acked_seq == 0
    for s in (1, 2):
        await r2.send_chunk(s)
    assert await r2.acks(2) == [1, 2]
    st = await _status(status_url)
    assert st["rows_by_robot"] == {"robot-a": 2 * ROWS} and st["hwm"] == {"robot-a": 2}
    await r2.close()


async def test_restart_keeps_the_durable_mark(tmp_path):
    cfg = LearnerConfig(data_dir=tmp_path / "run", server={"port": 0},
                        learner={"learning_starts": 10**9, "hidden": [16, 16]})
    for expect_acked, seqs in ((0, (1, 2)), (2, (3,))):
        app = make_app(cfg)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            r = Robot(f"ws://{host}:{port}/ws", "robot-a")
            assert (await r.open()).acked_seq == expect_acked
            for s in seqs:
                await r.send_chunk(s)
            assert await r.acks(len(seqs)) == list(seqs)
            await r.close()
        finally:
            await runner.cleanup()
    buf = ReplayBuffer(cfg.data_dir / "buffer", 1000)  # the buffer on disk holds each chunk once
    assert buf.rows == 3 * ROWS and buf.hwm("robot-a") == 3
