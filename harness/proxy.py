"""A real TCP proxy on loopback that cuts, stalls and counts the link between
an agent and a learner: the fault suite's (and the benchmarks') bad network."""

from __future__ import annotations

import asyncio
import random
import threading

from shared.tasks import until_first_done


class Proxy:
    """Forwards each connection to ``127.0.0.1:target_port`` from its own thread and loop.

    ``cut_after``: (lo, hi) bytes; each connection is cut (both sockets
    aborted) after a random count in that range, summed over both directions,
    for the first ``max_cuts`` connections (all when None).
    """

    def __init__(self, target_port: int, cut_after: tuple[int, int] | None = None, seed: int = 0,
                 max_cuts: int | None = None):
        self.target_port, self.cut_after, self.max_cuts = target_port, cut_after, max_cuts
        self.rng = random.Random(seed)
        self.cuts = 0
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the proxy did not start listening in 10 s")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._resume = asyncio.Event()
        self._resume.set()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stall(self, on: bool) -> None:
        """Stop forwarding without closing anything: a half-open link."""
        self.loop.call_soon_threadsafe(self._resume.clear if on else self._resume.set)

    async def _handle(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w1.close()
            return
        budget = None
        if self.cut_after and (self.max_cuts is None or self.cuts < self.max_cuts):
            budget = [self.rng.randint(*self.cut_after)]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(4096):
                await self._resume.wait()
                if budget is not None:
                    if len(data) >= budget[0]:
                        w.write(data[: budget[0]])
                        raise ConnectionAbortedError("cut")
                    budget[0] -= len(data)
                w.write(data)
                await w.drain()

        ended = await until_first_done(pipe(r1, w2), pipe(r2, w1))  # every exception retrieved
        if any(not t.cancelled() and isinstance(t.exception(), ConnectionAbortedError) for t in ended):
            self.cuts += 1
        for w in (w1, w2):
            w.transport.abort()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
