"""The CLI side of admin work on the learner host, through the learner's
loopback admin listener (endpoint.json, admin token): robots table edits that a
running learner picks up at once (or a loud failure), its status, operator
commands to a robot, and the local end of a reverse tunnel."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from shared.config import LearnerConfig
from shared.errors import ConfigError, FleetError
from shared.tasks import until_first_done


class AdminError(FleetError):
    code = "admin_failed"


def _endpoint(cfg: LearnerConfig) -> tuple[str, str, dict] | None:
    """(admin base URL, token, endpoint record) of a learner that ran on this data_dir, if any."""
    ep, tok = cfg.data_dir / "endpoint.json", cfg.data_dir / "admin_token"
    if not ep.exists() or not tok.exists():
        return None
    try:
        record = json.loads(ep.read_text())
    except ValueError:
        return None
    admin = record.get("admin")
    return (admin, tok.read_text().strip(), record) if admin else None


def _alive(record: dict) -> bool:
    """Whether the learner that wrote endpoint.json still runs (its pid, else its admin port)."""
    pid = record.get("pid")
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's process with that pid: assume the learner
    u = urlsplit(record.get("admin", ""))
    try:
        socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=1).close()
        return True
    except OSError:
        return False


def running_endpoint(cfg: LearnerConfig) -> tuple[str, str, dict]:
    """(admin base URL, token, endpoint record) of the learner running on this data_dir; ConfigError if none is."""
    ep = _endpoint(cfg)
    if ep is None or not _alive(ep[2]):
        raise ConfigError(f"no learner is running on {cfg.data_dir}: start `cloud-learner serve` first")
    return ep


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _reload(base: str, token: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/reload", headers=_headers(token), timeout=aiohttp.ClientTimeout(total=5)) as r:
            if r.status != 200:
                raise AdminError(f"{base}/reload answered {r.status} {(await r.text())[:200]}")
            return await r.json()


def notify_reload(cfg: LearnerConfig, change: str = "the change") -> str:
    """Tell a running learner to re-read robots.json; a line saying what happened.

    Raises AdminError when a learner runs but did not confirm: a revocation
    that silently missed the learner would leave the credential working."""
    ep = _endpoint(cfg)
    if ep is None or not _alive(ep[2]):
        return f"no learner is running on this data_dir; it will read {change} when it starts"
    base, token, record = ep
    try:
        res = asyncio.run(_reload(base, token))
    except (AdminError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise AdminError(
            f"{change} did NOT reach the running learner (pid {record.get('pid', '?')}, {base}): {e}. "
            "It re-reads robots.json by itself within seconds while it runs; check its log for "
            "event=robots_reloaded, or restart it"
        ) from None
    closed = ", ".join(res["closed"]) or "none"
    return f"the running learner reloaded its robot table (links closed: {closed})"


def fetch_status(cfg: LearnerConfig) -> dict:
    """The running learner's /status, from its admin listener (with the admin token)."""
    base, token, record = running_endpoint(cfg)

    async def get() -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.get(record.get("status") or base.rsplit("/admin", 1)[0] + "/status", headers=_headers(token),
                                timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    raise AdminError(f"/status answered {r.status} {(await r.text())[:200]}")
                return await r.json()

    try:
        return asyncio.run(get())
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise AdminError(f"the learner's admin listener {base} is not reachable: {e}") from None


def value_from_text(kind: str, text: str | None) -> Any:
    """A command's value as typed on a command line (``pause`` alone pauses; ``pause false`` resumes)."""
    if kind == "pause":
        words = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}
        if text is None:
            return True
        if text.lower() not in words:
            raise ValueError(f"pause takes true (pause) or false (resume), got {text!r}")
        return words[text.lower()]
    if kind == "reward" and text is not None:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"reward takes a number, got {text!r}") from None
    return text


def send_command(cfg: LearnerConfig, robot_id: str, kind: str, value: Any = None) -> dict[str, Any]:
    """Ask the running learner to send a robot an operator command (``POST /admin/robots/<id>/command``).

    Its answer on success (``{"ok": true, ...}``: queued on the robot's link); AdminError with the
    learner's reason otherwise (bad value, robot not linked, robot takes no commands)."""
    base, token, _ = running_endpoint(cfg)
    url = f"{base}/robots/{quote(robot_id, safe='')}/command"

    async def post() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"kind": kind, "value": value}, headers=_headers(token),
                                 timeout=aiohttp.ClientTimeout(total=5)) as r:
                text = await r.text()
                try:
                    answer = json.loads(text)
                except ValueError:
                    answer = {"error": text[:200]}
                if r.status != 200:
                    raise AdminError(f"the learner refused the command ({r.status}): {answer.get('error', text[:200])}")
                out: dict[str, Any] = answer
                return out

    try:
        return asyncio.run(post())
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise AdminError(f"the learner's admin listener {base} is not reachable: {e}") from None


async def serve_tunnel(cfg: LearnerConfig, robot: str, port: int, local_port: int, ready=None) -> None:
    """Listen on 127.0.0.1:local_port; each connection is bridged to ``port`` on ``robot``."""
    ep = _endpoint(cfg)
    if ep is None:
        raise ConfigError(f"no learner is running on {cfg.data_dir}: start `cloud-learner serve` first")
    base, token, _ = ep
    url = base.replace("http", "ws", 1) + f"/tunnel?robot={robot}&port={port}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(url, headers=_headers(token))  # plain http: the admin listener is loopback
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

            await until_first_done(up(), down())
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
