"""Raw websocket baselines: the same bytes over a bare websocket, no protocol.

    python -m bench._rawws sink      # aiohttp server; counts binary messages, answers "DONE n bytes" to "END"
    python -m bench._rawws source F  # aiohttp server; on connect sends file F as one message, times the reply

Servers use aiohttp (as the gateway does); clients use websockets (as the uplink does).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from aiohttp import WSMsgType, web


async def sink(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0, compress=False)
    await ws.prepare(request)
    n = size = 0
    async for m in ws:
        if m.type is WSMsgType.BINARY:
            n += 1
            size += len(m.data)
        elif m.type is WSMsgType.TEXT and m.data == "END":
            await ws.send_str(f"DONE {n} {size}")
    return ws


async def source(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0, compress=False)
    await ws.prepare(request)
    data = request.app["data"]
    await ws.receive()  # the client says it is ready
    t0 = time.perf_counter()
    await ws.send_bytes(data)
    await ws.receive()  # the client has the whole message
    print(f"SENT {time.perf_counter() - t0:.6f}", flush=True)
    await ws.close()
    return ws


async def main() -> None:
    app = web.Application(client_max_size=0)
    if sys.argv[1] == "sink":
        app.router.add_get("/ws", sink)
    else:
        app["data"] = Path(sys.argv[2]).read_bytes()
        app.router.add_get("/ws", source)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"READY ws://127.0.0.1:{runner.addresses[0][1]}/ws", flush=True)
    await asyncio.Event().wait()


async def send_all(url: str, bodies: list[bytes]) -> float:
    """Client: stream every body as one binary message; seconds until the sink has them all."""
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, compression=None) as ws:
        t0 = time.perf_counter()
        for b in bodies:
            await ws.send(b)
        await ws.send("END")
        reply = await ws.recv()
        dt = time.perf_counter() - t0
    assert reply.split()[1] == str(len(bodies)), reply
    return dt


async def receive_one(url: str) -> int:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send("ready")
        data = await ws.recv()
        await ws.send("got")
        try:
            await ws.recv()
        except Exception:
            pass
    return len(data)


if __name__ == "__main__":
    asyncio.run(main())
