"""The learner app on a real loopback socket, spoken to by a real websockets client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import time

import aiohttp
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from cloud.app import make_app
from cloud.buffer import ReplayBuffer
from cloud.admin import ADMIN_URL
from cloud.keys import ADMIN_TOKEN, BUFFER, CONFIG, REGISTRY
from cloud.robots import RobotRegistry
from harness import stored_count
from harness.inproc import serving
from shared import auth
from shared.chunk import StepRecord, build_batch, checksum, encode_chunk
from shared.config import LearnerConfig
from shared.protocol import Ack, Challenge, EdgeConnection, Reject, State, Welcome
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


@contextlib.asynccontextmanager
async def serve(tmp_path, server: dict | None = None, limits: dict | None = None, groups: dict | None = None):
    """The learner on a free loopback port; ``server``/``limits``/``groups`` override config sections."""
    cfg = LearnerConfig(
        data_dir=tmp_path / "run",
        server={"host": "127.0.0.1", "port": 0, "auth": "open", **(server or {})},  # unenrolled test robots: opted in
        limits=limits or {},
        learner={"learning_starts": 10**9, "hidden": [16, 16], "batch_size": 8},
        groups=groups or {},
    )
    app = make_app(cfg)
    async with serving(app) as base:
        status_url = StatusURL(app[ADMIN_URL] + "/status")  # the admin listener, not the robot port
        status_url.token = app[ADMIN_TOKEN]
        yield app, base.replace("http", "ws", 1) + "/ws", status_url


@pytest.fixture
async def server(tmp_path):
    async with serve(tmp_path) as s:
        yield s


def enroll(app, name: str) -> str:
    """Enroll a robot the way the CLI does (robots.json), then have the learner re-read it."""
    cred = RobotRegistry(app[CONFIG].data_dir / "robots.json").add(name)
    app[REGISTRY].reload()
    return cred


class Robot:
    """A minimal robot end: the real EdgeConnection over a real websocket."""

    def __init__(self, url: str, robot_id: str, spec: EpisodeSpec = SPEC, credential: str | None = None,
                 units: list[dict] | None = None):
        self.url, self.robot_id, self.spec, self.credential = url, robot_id, spec, credential
        self.units = units or [{"name": "arm"}]
        self.ws = None
        self.conn: EdgeConnection | None = None

    async def connect(self):
        """Connect and take the cloud's first message: its challenge (or a reject)."""
        self.conn = EdgeConnection(self.robot_id, self.spec.to_dict(), self.units, credential=self.credential)
        self.ws = await connect(self.url, compression=None, open_timeout=TIMEOUT)
        return await self.recv()

    async def open(self):
        """The whole handshake: challenge, hello; returns the welcome (or a reject)."""
        first = await self.connect()
        if isinstance(first, Reject):
            return first
        assert isinstance(first, Challenge), first
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


class StatusURL(str):
    """The admin listener's /status URL, with the admin token it needs."""

    token = ""


async def _status(url: StatusURL) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Authorization": f"Bearer {url.token}"}) as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            return await r.json()


def _stored_rows(app) -> int:
    """Rows on disk, read from the Parquet segments by the harness (not the buffer's own count)."""
    return stored_count(app[CONFIG].data_dir)


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
    assert st["rejections"] == {}
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
    _, url, status_url = server
    ws = await connect(url, compression=None, open_timeout=TIMEOUT)
    conn = EdgeConnection("x", SPEC.to_dict(), [])
    assert isinstance(conn.receive(await asyncio.wait_for(ws.recv(), TIMEOUT)), Challenge)  # the cloud speaks first
    await ws.send(b"not a frame at all")
    conn.hello(0)  # the client's state machine expects a welcome or a reject now
    msg = conn.receive(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert isinstance(msg, Reject) and msg.code == "bad_magic"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert (await _status(status_url))["rejections"] == {"bad_magic": 1}


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
    cfg = LearnerConfig(data_dir=tmp_path / "run", server={"port": 0, "auth": "open"},
                        learner={"learning_starts": 10**9, "hidden": [16, 16]})
    for expect_acked, seqs in ((0, (1, 2)), (2, (3,))):
        async with serving(make_app(cfg)) as base:
            r = Robot(base.replace("http", "ws", 1) + "/ws", "robot-a")
            assert (await r.open()).acked_seq == expect_acked
            for s in seqs:
                await r.send_chunk(s)
            assert await r.acks(len(seqs)) == list(seqs)
            await r.close()
    buf = ReplayBuffer(cfg.data_dir / "buffer", 1000)  # the buffer on disk holds each chunk once
    assert buf.rows == 3 * ROWS and buf.hwm("robot-a") == 3


# ------------------------------------------------------------- handshake and auth


async def test_cloud_sends_the_challenge_first_with_a_fresh_nonce(server):
    _, url, _ = server
    a, b = Robot(url, "robot-a"), Robot(url, "robot-b")
    ca, cb = await a.connect(), await b.connect()
    assert isinstance(ca, Challenge) and isinstance(cb, Challenge)
    assert ca.nonce != cb.nonce
    await a.close()
    await b.close()


async def test_silent_robot_is_dropped_after_the_handshake_timeout(tmp_path):
    async with serve(tmp_path, server={"handshake_timeout_s": 0.3}) as (app, url, status_url):
        r = Robot(url, "robot-a")
        assert isinstance(await r.connect(), Challenge)
        assert await r.closed()  # no hello: the learner hangs up
        st = await _status(status_url)
        assert st["rejections"] == {"handshake_timeout": 1} and st["robots"] == {}
        ok = Robot(url, "robot-b")  # a robot that answers in time is served
        assert isinstance(await ok.open(), Welcome)
        await ok.close()


async def test_unenrolled_robot_is_let_in_unauthenticated_in_open_mode(server):
    app, url, status_url = server
    r = Robot(url, "robot-a")
    welcome = await r.open()
    assert isinstance(welcome, Welcome) and welcome.server_signature == ""
    assert r.conn.state is State.OPEN
    assert (await _status(status_url))["robots"]["robot-a"]["authenticated"] is False
    await r.close()


async def test_unenrolled_robot_is_refused_when_auth_is_required(tmp_path):
    async with serve(tmp_path, server={"auth": "required"}) as (app, url, status_url):
        r = Robot(url, "robot-a")
        msg = await r.open()
        assert isinstance(msg, Reject) and msg.code == "auth_failed"
        assert await r.closed()
        cred = enroll(app, "robot-b")  # an enrolled robot with its credential is served
        ok = Robot(url, "robot-b", credential=cred)
        assert isinstance(await ok.open(), Welcome)
        st = await _status(status_url)
        assert st["rejections"] == {"auth_failed": 1}
        assert list(st["robots"]) == ["robot-b"] and st["robots"]["robot-b"]["authenticated"] is True
        await ok.close()


async def test_enrolled_robot_proves_its_credential_and_the_learner_signs(server):
    app, url, status_url = server
    cred = enroll(app, "robot-a")
    r = Robot(url, "robot-a", credential=cred)
    welcome = await r.open()
    assert isinstance(welcome, Welcome)
    assert welcome.server_signature  # checked by the EdgeConnection, or it would have raised
    assert r.conn.state is State.OPEN
    await r.send_chunk(1)
    assert await r.acks(1) == [1]
    assert (await _status(status_url))["robots"]["robot-a"]["authenticated"] is True
    await r.close()


@pytest.mark.parametrize("who", ["no_credential", "wrong_credential", "stored_key_as_credential"])
async def test_enrolled_robot_that_cannot_prove_it_is_refused(server, who):
    app, url, status_url = server
    cred = enroll(app, "robot-a")
    stored = auth.stored_key(auth.client_key(cred))
    credential = {
        "no_credential": None,
        "wrong_credential": auth.new_credential(),
        "stored_key_as_credential": auth.PREFIX + base64.urlsafe_b64encode(stored).decode().rstrip("="),
    }[who]
    r = Robot(url, "robot-a", credential=credential)
    msg = await r.open()
    assert isinstance(msg, Reject) and msg.code == "auth_failed"
    assert await r.closed()
    st = await _status(status_url)
    assert st["rejections"] == {"auth_failed": 1} and st["robots"] == {}
    assert _stored_rows(app) == 0


async def test_unenrolled_robot_that_sends_a_proof_is_refused(server):
    _, url, status_url = server
    r = Robot(url, "robot-a", credential=auth.new_credential())
    msg = await r.open()
    assert isinstance(msg, Reject) and msg.code == "auth_failed"
    assert (await _status(status_url))["rejections"] == {"auth_failed": 1}


async def test_revoked_robot_is_refused(server):
    app, url, status_url = server
    cred = enroll(app, "robot-a")
    RobotRegistry(app[CONFIG].data_dir / "robots.json").revoke("robot-a")
    app[REGISTRY].reload()
    r = Robot(url, "robot-a", credential=cred)
    msg = await r.open()
    assert isinstance(msg, Reject) and msg.code == "revoked"
    assert await r.closed()
    assert (await _status(status_url))["rejections"] == {"revoked": 1}


async def test_expired_credential_is_refused(server):
    app, url, status_url = server
    cred = enroll(app, "robot-a")
    app[REGISTRY].get("robot-a").expires = time.time() - 1
    r = Robot(url, "robot-a", credential=cred)
    msg = await r.open()
    assert isinstance(msg, Reject) and msg.code == "credential_expired"
    assert await r.closed()
    assert (await _status(status_url))["rejections"] == {"credential_expired": 1}


async def test_links_beyond_max_connections_are_refused(tmp_path):
    async with serve(tmp_path, server={"max_connections": 1}) as (app, url, status_url):
        a = Robot(url, "robot-a")
        assert isinstance(await a.open(), Welcome)
        b = Robot(url, "robot-b")
        msg = await b.open()
        assert isinstance(msg, Reject) and msg.code == "too_many_connections"
        assert await b.closed()
        await a.send_chunk(1)  # the linked robot is unaffected
        assert await a.acks(1) == [1]
        st = await _status(status_url)
        assert st["rejections"] == {"too_many_connections": 1} and list(st["robots"]) == ["robot-a"]
        await a.close()


async def test_robot_flooding_messages_is_rate_limited(tmp_path):
    async with serve(tmp_path, limits={"max_messages_per_s": 2}) as (app, url, status_url):
        r = Robot(url, "robot-a")
        assert isinstance(await r.open(), Welcome)
        for i in range(20):
            try:
                await r.ws.send(r.conn.status({"i": i}))
            except ConnectionClosed:
                break
        msg = await r.recv()
        assert isinstance(msg, Reject) and msg.code == "rate_limited"
        assert await r.closed()
        assert (await _status(status_url))["rejections"] == {"rate_limited": 1}

