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

from shared.errors import FleetError

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


CLOSE_TIMEOUT_S = 5.0  # a revoked peer that stops reading must not hold up the other closes


async def _close(link: Link, why: tuple[str, str]) -> None:
    try:  # the reason first (it overtakes queued policy parts), then the close; a peer that stops reading gets neither
        await asyncio.wait_for(link.outbox.send(CONTROL, link.conn.reject(*why)), CLOSE_TIMEOUT_S)
        await asyncio.wait_for(link.ws.close(code=4003, message=why[0].encode()), CLOSE_TIMEOUT_S)
    except asyncio.TimeoutError:  # the peer does not read: drop the transport; the link's handler ends
        req = getattr(link.ws, "_req", None)  # aiohttp offers no public handle on the transport
        if req is not None and req.transport is not None:
            req.transport.abort()


async def sweep(app: web.Application) -> list[str]:
    """Close the links that lost their right to be open, all at once; their robot ids."""
    registry, closing = app[REGISTRY], {}
    for rid, link in list(app[ROBOTS].items()):
        try:
            why = refusal(link, registry)
        except Exception:  # noqa: BLE001 - one odd link must not stop the checks of the others
            log.exception("event=access_check_failed robot_id=%s", rid)
            why = ("revoked", "the learner could not check this link's right to stay open")
        if why is None or link.ws.closed:
            continue
        log.warning("event=link_closed_by_access robot_id=%s code=%s", rid, why[0])
        closing[rid] = _close(link, why)
    await asyncio.gather(*closing.values(), return_exceptions=True)
    return list(closing)


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
    except (OSError, FleetError) as e:
        log.error("event=robots_reload_failed path=%s error=%r (keeping the previous table)", registry.path, e)
        return False
    for name, why in registry.invalid.items():
        log.error("event=robot_entry_invalid robot_id=%s error=%r action=refused_until_fixed", name, why)
    log.info("event=robots_reloaded robots=%d invalid=%d", len(registry.entries), len(registry.invalid))
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
