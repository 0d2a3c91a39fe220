"""The uplink as a thin shell over shared.protocol.stream: the real Uplink and a scripted
learner in this process, over a real loopback websocket. Credit, acks, and what a local
InvalidState means to the reconnect loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from websockets.asyncio.server import serve

from edge_agent.spool import Spool
from edge_agent.uplink import Uplink
from shared.chunk import checksum
from shared.config import LinkConfig
from shared.errors import InvalidState
from shared.protocol import Chunk, CloudConnection, EdgeConnection, Limits, Message, Status

TIMEOUT = 10.0


class Learner:
    """Challenges, welcomes with ``max_inflight`` credit, then queues what the robot sends."""

    def __init__(self, max_inflight: int):
        self.limits = Limits(max_inflight_chunks=max_inflight)
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.ws: Any = None
        self.conn: CloudConnection | None = None

    async def _handler(self, ws: Any) -> None:
        conn = CloudConnection(self.limits)
        await ws.send(conn.challenge())
        conn.receive(await ws.recv())
        await ws.send(conn.welcome("run", 0, 0))
        self.ws, self.conn = ws, conn
        async for data in ws:
            self.inbox.put_nowait(conn.receive(data))

    async def __aenter__(self) -> "Learner":
        self._server = await serve(self._handler, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def chunks(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            msg = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
            if isinstance(msg, Chunk):
                out.append(msg.seq)
        return out

    async def quiet(self, reports: int) -> None:
        """The robot's next ``reports`` status reports come with no chunk among them."""
        for _ in range(reports):
            msg = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
            assert isinstance(msg, Status), f"{msg} while the robot had no credit"

    async def ack(self, seq: int) -> None:
        assert self.conn is not None
        await self.ws.send(self.conn.ack(seq))


def uplink(tmp_path, url: str, chunks: int) -> Uplink:
    spool = Spool(tmp_path / "spool", fsync="never")
    for _ in range(chunks):
        body = b"x" * 100
        spool.append("ep-1", 1, 100, checksum(body), body)
    cfg = LinkConfig(url=url, reconnect_min_s=0.05, reconnect_max_s=0.2, status_interval_s=0.05)
    return Uplink(cfg, lambda: EdgeConnection("arm-1", {}, []), spool, _no_policy, lambda: {}, lambda: 0, Limits())


async def _no_policy(version: int, digest: str, data: bytes) -> None:
    raise AssertionError("no policy was sent")


async def test_uplink_keeps_to_the_credit_the_welcome_gave(tmp_path):
    async with Learner(max_inflight=3) as learner:
        up = uplink(tmp_path, learner.url, chunks=8)
        task = asyncio.create_task(up.run())
        try:
            assert await learner.chunks(3) == [1, 2, 3]
            await learner.quiet(3)  # no credit left: only status reports
            await learner.ack(2)
            assert await learner.chunks(2) == [4, 5]  # two acked, two more
            await learner.quiet(3)
            await learner.ack(5)
            assert await learner.chunks(3) == [6, 7, 8]
            await learner.ack(8)
            await asyncio.wait_for(up.wait_drained(), TIMEOUT)
            assert up.spool.acked_seq == 8 and up.refused == ""
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_uplink_resends_what_was_unacked_when_a_link_is_cut(tmp_path):
    async with Learner(max_inflight=4) as learner:
        up = uplink(tmp_path, learner.url, chunks=6)
        task = asyncio.create_task(up.run())
        try:
            assert await learner.chunks(4) == [1, 2, 3, 4]
            await learner.ack(2)
            assert await learner.chunks(2) == [5, 6]
            await learner.ws.close()  # cut: 3..6 were sent but never acked; this learner's mark is 0
            assert await learner.chunks(4) == [3, 4, 5, 6]  # the spool forgot 1..2 once acked
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_an_invalid_state_after_our_own_close_is_a_link_gone_not_a_refusal(tmp_path, monkeypatch, caplog):
    """Sending on a link this side already closed is local misuse (InvalidState): the loop redials,
    it never shows the robot as refused or logs robot_refused, as it did for the old bad_state."""
    up = uplink(tmp_path, "ws://127.0.0.1:9/ws", chunks=0)
    sessions = asyncio.Event()

    async def session() -> None:
        sessions.set()
        raise InvalidState("link is closed, not open")

    monkeypatch.setattr(up, "_session", session)
    with caplog.at_level(logging.INFO, logger="fleetrl.uplink"):
        task = asyncio.create_task(up.run())
        try:
            await asyncio.wait_for(sessions.wait(), TIMEOUT)  # the loop handled it before it slept
            assert up.reconnects == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert up.refused == ""
    assert up.last_error.startswith("InvalidState")
    assert "robot_refused" not in caplog.text and "link_down" in caplog.text


@pytest.mark.parametrize("code", ["hold", "stream_gap", "rate_limited", "too_many_inflight"])
def test_transient_refusals_keep_the_data_and_are_not_shown_as_refused(tmp_path, code):
    from edge_agent.uplink import LinkRejected

    up = uplink(tmp_path, "ws://127.0.0.1:9/ws", chunks=0)
    up._rejected(LinkRejected("x", code), 0.1)
    assert up.refused == "" and up.holding == (code == "hold")
    up._rejected(LinkRejected("no", "auth_failed"), 0.1)
    assert up.refused == "auth_failed: no"
