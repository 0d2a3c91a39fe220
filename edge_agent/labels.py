"""Reward labels over the agent's local HTTP API: ``POST /label`` beside ``/metrics``.

For a labelling button in a lab's own UI, a foot pedal script, or a person
at the robot computer (``edge-agent label --success``): a step reward goes to
the current step's ``human_reward``, an episode label ends the episode as a
success or failure (or cuts it). The listener stays on localhost
(``service.metrics_host``), and each agent start writes a fresh token to
``<state_dir>/label.token`` (mode 0600): only whoever can read the agent's
state directory can label, not any process that can reach the port.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web

from hal_drivers.teleop.base import EVENTS
from shared.errors import ConfigError
from shared.fsutil import atomic_write

from .operator import OperatorControls

TOKEN_FILE = "label.token"
MAX_BODY = 1024


def write_token(state_dir: Path) -> str:
    """A new token for this agent start, readable by the agent's user only."""
    token = secrets.token_urlsafe(32)
    path = Path(state_dir) / TOKEN_FILE
    atomic_write(path, token.encode(), fsync=False)
    os.chmod(path, 0o600)
    return token


def parse_label(body: Any) -> tuple[str, float | str]:
    """``{"reward": x}`` or ``{"event": "success" | "failure" | "reset"}`` -> ("reward", x) or ("event", e)."""
    if not isinstance(body, dict) or len(body) != 1:
        raise ValueError('send one of {"reward": <number>} or {"event": "success" | "failure" | "reset"}')
    (key, value), = body.items()
    if key == "reward":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"reward must be a finite number, got {value!r}")
        return "reward", float(value)
    if key == "event":
        if value not in EVENTS:
            raise ValueError(f"event must be one of {', '.join(EVENTS)}, got {value!r}")
        return "event", str(value)
    raise ValueError(f"unknown label {key!r}; use reward or event")


def label_routes(operator: OperatorControls, token: str) -> list[web.RouteDef]:
    async def label(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response({"error": f"missing or wrong token (see <state_dir>/{TOKEN_FILE})"}, status=401)
        if (request.content_length or 0) > MAX_BODY:
            return web.json_response({"error": "label body too large"}, status=413)
        try:
            kind, value = parse_label(json.loads(await request.read()))
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            return web.json_response({"error": str(e)}, status=400)
        if kind == "reward":
            operator.add_reward(float(value))
        else:
            operator.label(str(value))
        return web.json_response({"ok": True, kind: value})

    return [web.post("/label", label)]


def send_label(metrics_url: str, state_dir: Path, label: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """POST a label to the running agent whose status names ``metrics_url`` (ConfigError saying why not)."""
    try:
        token = (Path(state_dir) / TOKEN_FILE).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read {Path(state_dir) / TOKEN_FILE}: {e.strerror} (is the agent running, and are "
                          "you its user?)") from None
    url = metrics_url.rsplit("/metrics", 1)[0] + "/label"
    req = urllib.request.Request(url, json.dumps(label).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out
    except urllib.error.HTTPError as e:
        raise ConfigError(f"the agent refused the label: {json.loads(e.read() or b'{}').get('error', e.reason)}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ConfigError(f"cannot reach the agent at {url}: {getattr(e, 'reason', e)}") from None
