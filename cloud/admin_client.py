"""The CLI side of admin work on the learner host: robots table edits that a
running learner picks up at once, and the local end of a reverse tunnel."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp

from shared.config import LearnerConfig
from shared.errors import ConfigError


def _endpoint(cfg: LearnerConfig) -> tuple[str, str] | None:
    """(admin base URL, token) of a learner running on this data_dir, if any."""
    ep, tok = cfg.data_dir / "endpoint.json", cfg.data_dir / "admin_token"
    if not ep.exists() or not tok.exists():
        return None
    admin = json.loads(ep.read_text()).get("admin")
    return (admin, tok.read_text().strip()) if admin else None


def _ssl_off() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # loopback to our own learner
    return ctx


async def _reload(base: str, token: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/reload", headers={"Authorization": f"Bearer {token}"}, ssl=_ssl_off(),
                             timeout=aiohttp.ClientTimeout(total=5)) as r:
            r.raise_for_status()
            return await r.json()


def notify_reload(cfg: LearnerConfig) -> str:
    """Tell a running learner to re-read robots.json; a line saying what happened."""
    ep = _endpoint(cfg)
    if ep is None:
        return "no learner is running on this data_dir; it will read the change when it starts"
    try:
        res = asyncio.run(_reload(*ep))
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return "the learner is not reachable; it will read the change when it starts"
    closed = ", ".join(res["closed"]) or "none"
    return f"the running learner reloaded its robot table (links closed: {closed})"


async def serve_tunnel(cfg: LearnerConfig, robot: str, port: int, local_port: int, ready=None) -> None:
    """Listen on 127.0.0.1:local_port; each connection is bridged to ``port`` on ``robot``."""
    ep = _endpoint(cfg)
    if ep is None:
        raise ConfigError(f"no learner is running on {cfg.data_dir}: start `cloud-learner serve` first")
    base, token = ep
    url = base.replace("http", "ws", 1) + f"/tunnel?robot={robot}&port={port}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}, ssl=_ssl_off())
            except aiohttp.WSServerHandshakeError as e:
                writer.close()
                print(f"tunnel: {e.status} {e.message}")
                return

            async def up() -> None:
                while data := await reader.read(65536):
                    await ws.send_bytes(data)
                await ws.close()

            async def down() -> None:
                async for m in ws:
                    if m.type is aiohttp.WSMsgType.BINARY:
                        writer.write(m.data)
                        await writer.drain()
                writer.close()

            tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", local_port)
    bound = server.sockets[0].getsockname()[1]
    print(f"TUNNEL 127.0.0.1:{bound} -> {robot}:{port}", flush=True)
    if ready is not None:
        ready(bound)
    async with server:
        await server.serve_forever()


def registry_path(cfg: LearnerConfig) -> Path:
    return cfg.data_dir / "robots.json"
