"""Who may stay linked: the learner follows robots.json on its own.

A revocation, a rotation, an expiry or an enrollment must reach live links
even when nobody tells the learner (the CLI's reload failed, someone edited
the file, a credential expired at 3 a.m.). A task polls the file's identity
once a second, re-reads it when it changed, and closes every link that no
longer matches the table: revoked, expired, removed, or logged in with a key
the table no longer holds.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import Any, AsyncIterator

from aiohttp import web

from .gateway import CONTROL, Link
from .keys import REGISTRY, ROBOTS
from .robots import RobotRegistry

log = logging.getLogger("fleetrl.access")

POLL_S = 1.0


def refusal(link: Link, registry: RobotRegistry) -> tuple[str, str] | None:
    """(code, message) when ``link`` may no longer stay open under the current table, else None."""
    entry = registry.get(link.robot_id)
    if not link.authenticated:  # an open-mode link: it must prove itself once the name is enrolled
        if entry is not None:
            return "auth_failed", f"robot {link.robot_id!r} is now enrolled: link again with its credential"
        return None
    if entry is None:
        return "revoked", f"robot {link.robot_id!r} was removed from the robot table"
    why = entry.refusal()
    if why is not None:
        return why
    if link.stored_key is None or not hmac.compare_digest(bytes.fromhex(entry.stored_key), link.stored_key):
        return "credential_rotated", f"robot {link.robot_id!r} has a new credential; link again with it"
    return None


async def sweep(app: web.Application) -> list[str]:
    """Close the links that lost their right to be open; their robot ids."""
    registry, closed = app[REGISTRY], []
    for rid, link in list(app[ROBOTS].items()):
        why = refusal(link, registry)
        if why is None or link.ws.closed:
            continue
        link.outbox.put(CONTROL, link.conn.reject(*why))
        await asyncio.sleep(0)  # let the pump send the reason before the close
        await link.ws.close(code=4003, message=why[0].encode())
        closed.append(rid)
        log.warning("event=link_closed_by_access robot_id=%s code=%s", rid, why[0])
    return closed


def _identity(path: os.PathLike[str]) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns


def reload(app: web.Application) -> bool:
    """Re-read robots.json; on a file that does not parse, keep the last good table (logged)."""
    registry = app[REGISTRY]
    try:
        registry.reload()
    except (OSError, ValueError, TypeError) as e:
        log.error("event=robots_reload_failed path=%s error=%r (keeping the previous table)", registry.path, e)
        return False
    log.info("event=robots_reloaded robots=%d", len(registry.entries))
    return True


async def follow_robots(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: re-read robots.json when it changes; close links it no longer allows (expiry too)."""
    path = app[REGISTRY].path

    async def loop() -> None:
        seen: Any = _identity(path)
        while True:
            await asyncio.sleep(POLL_S)  # a poll period, not a synchronisation
            try:
                now = _identity(path)
                if now != seen:
                    seen = now
                    reload(app)
                await sweep(app)
            except Exception:  # noqa: BLE001 - this loop enforces revocation: it must outlive any one failure
                log.exception("event=access_check_failed (retrying in %.0f s)", POLL_S)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
