"""Operator commands to one robot, on the admin listener: ``POST /admin/robots/{robot_id}/command``
with ``{"kind": ..., "value": ...}`` (pause, start_episode, stop_episode, label, reward; see
:mod:`shared.protocol.commands`).

The command goes out on the robot's own link, ahead of bulk policy parts, and the
robot applies it at its next control tick; its status report (``/status`` ->
``robots.<id>.reported``) shows the effect a couple of seconds later. The answer
says the command was queued on the link, not that the robot applied it: a link
that drops right after may lose it, and the caller sees that in the report.
A robot that did not offer commands in its hello (an agent that predates them, a
site with ``control.remote_commands = false``, a robot that cannot verify this
learner) gets none: 409, because the frame would break an older robot's link.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from aiohttp import web

from shared.errors import InvalidState, ProtocolError
from shared.protocol import State, commands

from .gateway import CONTROL
from .keys import ROBOTS

log = logging.getLogger("fleetrl.admin")
MAX_BODY = 4096


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


def parse_body(raw: bytes) -> tuple[str, Any]:
    """(kind, value) of a request body, the value checked for its kind; ValueError saying what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise ValueError('the body must be JSON: {"kind": "pause", "value": true}') from None
    if not isinstance(body, dict) or "kind" not in body or set(body) - {"kind", "value"}:
        raise ValueError('the body must be {"kind": <kind>, "value": <value>} (value only where the kind takes one); '
                         f"kinds: {', '.join(commands.KINDS)}")
    try:
        return body["kind"], commands.check(body["kind"], body.get("value"))
    except ProtocolError as e:
        raise ValueError(e.message) from None


def command_routes(check: Callable[[web.Request], web.Application]) -> list[web.RouteDef]:
    """The command route; ``check`` is the admin listener's auth (403 without the admin token)."""

    async def command(request: web.Request) -> web.Response:
        app = check(request)
        robot_id = request.match_info["robot_id"]
        shown = robot_id[:128]  # in messages: ids are at most 128 characters (shared.ids)
        raw = b"" if (request.content_length or 0) > MAX_BODY else await request.read()  # read() is capped too
        if len(raw) > MAX_BODY or (request.content_length or 0) > MAX_BODY:
            return _error(413, f"a command body is at most {MAX_BODY} bytes")
        try:
            kind, value = parse_body(raw)
        except ValueError as e:
            return _error(400, str(e))
        link = app[ROBOTS].get(robot_id)
        if link is None or link.conn.state is not State.OPEN:
            return _error(404, f"robot {shown!r} is not linked to this learner now")
        if not link.conn.takes_commands:
            return _error(409, f"robot {shown!r} does not take commands on this link: its agent predates them, "
                               "its config sets control.remote_commands = false, or it cannot verify this learner "
                               "(no credential); see its log")
        try:
            link.outbox.put(CONTROL, link.conn.command(kind, value))  # control lane: ahead of policy parts
        except InvalidState:  # the link closed between the checks and now
            return _error(404, f"robot {shown!r} is not linked to this learner now")
        log.info("event=robot_command robot_id=%s kind=%s value=%r", robot_id, kind, value)
        return web.json_response({"ok": True, "robot_id": robot_id, "kind": kind, "value": value, "queued": True})

    return [web.post("/admin/robots/{robot_id}/command", command)]
