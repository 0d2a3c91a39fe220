"""A small delaying TCP relay: forwards each connection, holding every piece of
data for ``delay_ms`` in each direction (ordered), which adds 2 x delay_ms to
the round trip (this kernel has no netem). Records (time, bytes) forwarded
towards the learner and writes them to ``record`` on SIGTERM.

    python -m bench._relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS RECORD
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

UP: list[tuple[float, int]] = []


async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, delay: float, up: bool) -> None:
    q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def later() -> None:
        while True:
            due, data = await q.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            w.write(data)
            if up:
                UP.append((time.time(), len(data)))
            await w.drain()
        w.close()

    task = asyncio.create_task(later())
    try:
        while data := await r.read(65536):
            q.put_nowait((time.monotonic() + delay, data))
    except (ConnectionError, OSError):
        pass
    q.put_nowait((0.0, b""))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def main() -> None:
    lh, lp, th, tp, delay_ms, record = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
    delay = delay_ms / 1000

    async def handle(r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(th, tp)
        except OSError:
            w1.close()
            return
        await asyncio.gather(pipe(r1, w2, delay, True), pipe(r2, w1, delay, False), return_exceptions=True)
        for w in (w1, w2):
            w.transport.abort()

    server = await asyncio.start_server(handle, lh, lp)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    server.close()
    with open(record, "w") as f:
        json.dump(UP, f)


if __name__ == "__main__":
    asyncio.run(main())
