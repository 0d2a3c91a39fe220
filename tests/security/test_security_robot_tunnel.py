"""The robot's end of the reverse tunnel under pressure from the learner's side: a
local service that never reads must not stall acks and policies, and the number of
open streams is capped."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

from harness.waits import until
from shared import auth
from shared.protocol import TunnelClose
from tests.security.robot_link import ScriptedLearner, robot, run_until


class DeafService:
    """A local TCP service that accepts connections and never reads a byte."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the kernel's share small
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.srv.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            with self.accepted:
                self.conns.append(c)  # held open, never read
                self.accepted.notify_all()

    def wait_conns(self, n: int, timeout: float = 30.0) -> bool:
        """Block until ``n`` connections were accepted (call through asyncio.to_thread)."""
        with self.accepted:
            return self.accepted.wait_for(lambda: len(self.conns) >= n, timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.srv.close()


async def _until_close(learner: ScriptedLearner, ws, conn, stream: int) -> TunnelClose:
    while True:
        msg = conn.receive(await ws.recv())
        if isinstance(msg, TunnelClose) and msg.stream == stream:
            return msg


def test_a_service_that_never_reads_does_not_stall_acks(tmp_path: Path, monkeypatch) -> None:
    import edge_agent.tunnel as tunnel

    monkeypatch.setattr(tunnel, "STREAM_BUFFER", 1 << 20)
    deaf = DeafService()
    cred = auth.new_credential()
    sent = {"bytes": 0}
    closes: list[str] = []

    async def script(ws, conn) -> None:
        chunk = await learner.next_chunk(ws, conn)
        await ws.send(conn.tunnel_open(1, deaf.port))
        part = b"\0" * 65536
        for _ in range(400):  # 25 MiB: far past the kernel's buffers and the robot's 1 MiB
            await ws.send(conn.tunnel_data(1, part))
            sent["bytes"] += len(part)
        await ws.send(conn.ack(chunk.seq))  # behind the flood: it arrives only if the robot kept reading
        closes.append((await _until_close(learner, ws, conn, 1)).reason)
        closed.set()
        await ws.wait_closed()

    async def main() -> None:
        nonlocal learner, closed
        closed = asyncio.Event()
        async with ScriptedLearner(cred, script) as learner:
            up = robot(tmp_path, learner.url, cred, _no_policy, tunnel_allow=[deaf.port])

            async def done() -> None:
                await up.wait_drained()
                await closed.wait()

            await run_until(up, done, timeout=60)
            assert learner.links == 1 and up.reconnects == 0, up.last_error

    learner = None
    closed: asyncio.Event
    try:
        asyncio.run(main())
    finally:
        deaf.close()
    assert sent["bytes"] == 400 * 65536
    assert "not reading" in closes[0], closes


def test_open_streams_are_capped(tmp_path: Path) -> None:
    deaf = DeafService()
    cred = auth.new_credential()
    reasons: dict[int, str] = {}

    async def script(ws, conn) -> None:
        chunk = await learner.next_chunk(ws, conn)
        for stream in (1, 2, 3):
            await ws.send(conn.tunnel_open(stream, deaf.port))
        reasons[3] = (await _until_close(learner, ws, conn, 3)).reason
        # a stream counts until it is done, connecting included
        assert await asyncio.to_thread(deaf.wait_conns, 2), "the two allowed streams never connected"
        await ws.send(conn.tunnel_close(1))  # one closes: room for another
        await ws.send(conn.tunnel_open(4, deaf.port))
        await ws.send(conn.ack(chunk.seq))
        await ws.wait_closed()

    async def main() -> None:
        nonlocal learner
        async with ScriptedLearner(cred, script) as learner:
            up = robot(tmp_path, learner.url, cred, _no_policy, tunnel_allow=[deaf.port], tunnel_max_streams=2)
            await run_until(up, up.wait_drained)

            def held() -> int:
                return len(deaf.conns)

            await until(lambda: held() >= 3, "three tunnel streams at the service")
            assert held() == 3, f"streams 1, 2 and 4 reach the service, 3 does not: {held()}"

    learner = None
    try:
        asyncio.run(main())
    finally:
        deaf.close()
    assert "too many tunnel streams" in reasons[3], reasons


async def _no_policy(version: int, sha: str, data: bytes) -> None:
    raise AssertionError("no policy expected")
