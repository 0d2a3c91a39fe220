"""Enrollment on the robot: store the credential the learner issued (0600)
and the learner's certificate pin, and prove both work with one handshake
that must end in a signed Welcome (a rejection proves nothing about who sent it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from shared import auth
from shared.config import AgentConfig
from shared.errors import ConfigError, FleetError, ProtocolError
from shared.fsutil import atomic_write
from shared.protocol import EdgeConnection, Reject

from .handshake import normalize_pin, open_link, peer_sha256, tls_context

CREDENTIAL = "credential"
LEARNER = "learner.json"


def load(cfg: AgentConfig) -> tuple[str | None, str | None]:
    """(credential, certificate pin) for this robot, from config or enrollment files."""
    path = cfg.link.credential_file or cfg.state_dir / CREDENTIAL
    credential = None
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"link.credential_file: {path} is readable by others; chmod 600 it")
        credential = path.read_text().strip()
        try:
            auth.client_key(credential)
        except ValueError as e:
            raise ConfigError(f"link.credential_file: {path}: {e}") from None
    elif cfg.link.credential_file is not None:
        raise ConfigError(f"link.credential_file: {path} does not exist")
    pin = cfg.link.pin_sha256
    learner = cfg.state_dir / LEARNER
    if pin is None and learner.exists():
        pin = json.loads(learner.read_text()).get("pin_sha256")
    return credential, pin


def _write_secret(path: Path, text: str) -> None:
    """0600 from the temp file's creation, even over a leftover temp file with a looser mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode(), mode=0o600)


async def _probe(url: str, robot_id: str, credential: str, pin: str | None, ca_file: Path | None,
                 spec: dict[str, Any], units: list[dict[str, Any]]) -> str | None:
    """Handshake once, as the agent will; return the learner certificate's sha256 (wss).

    Only a Welcome whose signature checks counts: it proves the far end holds this robot's
    stored key and sees the same certificate we do, so neither an impostor nor a relay
    that shows its own certificate can get its certificate pinned here."""
    conn = EdgeConnection(robot_id, spec, units, credential=credential)
    # With no CA, trust the certificate seen now (it gets pinned, once the welcome proves it) or the --pin given.
    async with connect(url, ssl=tls_context(url, ca_file, trust_by_pin=True), open_timeout=10, compression=None,
                       close_timeout=2) as ws:
        seen = peer_sha256(ws)
        if pin and seen is not None and seen != normalize_pin(pin):
            raise ConfigError(f"learner certificate sha256 {seen} does not match --pin {pin}")
        try:
            msg = await open_link(ws, conn, 10)
        except ProtocolError as e:
            raise ConfigError(f"the learner at {url} did not prove it holds this robot's enrollment ({e.code}: "
                              f"{e.message}); a relay or an impostor may sit in between. Nothing stored") from None
        if isinstance(msg, Reject):
            raise ConfigError(f"the learner refused this robot: {msg.message} ({msg.code}). Nothing stored")
        with contextlib.suppress(WebSocketException):
            await ws.send(conn.reject("enrolled", "enrollment check done"))  # a clean goodbye, logged by the learner
        return seen


def _describe(cfg: AgentConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The episode spec the agent will announce: the learner welcomes only a robot it can take."""
    from hal_drivers import registry

    try:
        desc = registry.describe(cfg.robot.driver, cfg.robot.options, name=cfg.robot.name)
    except FleetError:
        raise
    except Exception as e:  # noqa: BLE001 - any driver failure is reported, with the way around it
        raise ConfigError(f"robot.driver {cfg.robot.driver}: cannot describe the robot for the enrollment "
                          f"handshake ({type(e).__name__}: {e}); fix the driver, or enroll with --no-check") from None
    return desc.episode_spec().to_dict(), [desc.to_dict()]


def enroll(cfg: AgentConfig, url: str, credential: str, pin: str | None = None, check: bool = True) -> dict:
    try:
        auth.client_key(credential)
    except ValueError as e:
        raise ConfigError(f"--credential: {e}") from None
    seen = None
    if check:
        try:
            spec, units = _describe(cfg)
            seen = asyncio.run(_probe(url, cfg.robot_id, credential, pin, cfg.link.ca_file, spec, units))
        except FleetError:
            raise
        except (OSError, asyncio.TimeoutError, ssl.SSLError, WebSocketException) as e:
            raise ConfigError(f"cannot reach the learner at {url}: {e}") from None
    _write_secret(cfg.link.credential_file or cfg.state_dir / CREDENTIAL, credential + "\n")
    record = {"url": url, "robot_id": cfg.robot_id, "pin_sha256": pin or seen}
    atomic_write(cfg.state_dir / LEARNER, json.dumps(record, indent=1).encode())
    return record
