"""The robot's real uplink against a scripted learner, both in one event loop over a
real websocket: for attacks that come from the learner's side of the link."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable

from websockets.asyncio.server import serve

from edge_agent.spool import Spool
from edge_agent.uplink import Uplink
from shared import auth
from shared.chunk import checksum
from shared.config import LinkConfig
from shared.protocol import Chunk, CloudConnection, EdgeConnection, Limits

Script = Callable[[Any, CloudConnection], Awaitable[None]]


class ScriptedLearner:
    """Challenges, checks the robot's proof, signs the welcome, then runs ``script(ws, conn)``."""

    def __init__(self, credential: str, script: Script):
        self.stored = auth.stored_key(auth.client_key(credential))
        self.script = script
        self.links = 0
        self.chunks: list[int] = []
        self.url = ""

    async def _handler(self, ws: Any) -> None:
        conn = CloudConnection()
        await ws.send(conn.challenge())
        conn.receive(await ws.recv())
        assert conn.verify(self.stored), "the robot's proof did not verify"
        await ws.send(conn.welcome("run", 0, 0, self.stored))
        self.links += 1
        await self.script(ws, conn)

    async def __aenter__(self) -> "ScriptedLearner":
        self._server = await serve(self._handler, "127.0.0.1", 0, max_size=None, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def next_chunk(self, ws: Any, conn: CloudConnection) -> Chunk:
        """The next chunk the robot sends (status reports in between are skipped)."""
        while True:
            msg = conn.receive(await ws.recv())
            if isinstance(msg, Chunk):
                self.chunks.append(msg.seq)
                return msg


def robot(tmp: Path, url: str, credential: str, on_policy: Callable[[int, str, bytes], Awaitable[None]],
          chunks: int = 1, **link: Any) -> Uplink:
    """An uplink with ``chunks`` chunks waiting in its spool."""
    spool = Spool(tmp / "spool", fsync="never")
    for _ in range(chunks):
        body = b"x" * 100
        spool.append("ep-1", 1, 100, checksum(body), body)
    cfg = LinkConfig(url=url, reconnect_min_s=0.05, reconnect_max_s=0.2, status_interval_s=0.2, **link)
    return Uplink(cfg, lambda: EdgeConnection("arm-1", {}, [], Limits(), credential), spool, on_policy,
                  lambda: {}, lambda: 0, Limits())


async def run_until(uplink: Uplink, done: Callable[[], Awaitable[Any]], timeout: float = 20) -> None:
    """Run the uplink until ``done()`` returns; the uplink task must not die on the way."""
    task = asyncio.create_task(uplink.run())
    try:
        waiter = asyncio.create_task(done())
        finished, _ = await asyncio.wait([task, waiter], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in finished:
            waiter.cancel()
            raise AssertionError(f"the uplink task died: {task.exception()!r}")
        if waiter not in finished:
            waiter.cancel()
            raise AssertionError(f"timed out after {timeout} s (last link error: {uplink.last_error!r})")
        waiter.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
