"""Enrollment on the robot: store the credential the learner issued (0600)
and the learner's certificate pin, and prove both work with one handshake."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path

from websockets.asyncio.client import connect

from shared import auth
from shared.config import AgentConfig
from shared.errors import ConfigError, FleetError
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def _probe(url: str, robot_id: str, credential: str, pin: str | None, ca_file: Path | None) -> str | None:
    """Handshake once; return the learner certificate's sha256 (wss) after checking the credential."""
    # An empty spec is enough to test the credential: the learner checks identity first.
    conn = EdgeConnection(robot_id, {}, [], credential=credential)
    # With no CA, trust the certificate seen now (it gets pinned) or the --pin given.
    async with connect(url, ssl=tls_context(url, ca_file, trust_by_pin=True), open_timeout=10, compression=None) as ws:
        seen = peer_sha256(ws)
        if pin and seen is not None and seen != normalize_pin(pin):
            raise ConfigError(f"learner certificate sha256 {seen} does not match --pin {pin}")
        msg = await open_link(ws, conn, 10)
        if isinstance(msg, Reject) and msg.code in ("auth_failed", "revoked", "credential_expired"):
            raise ConfigError(f"the learner refused this credential: {msg.message} ({msg.code})")
        return seen  # welcomed, or identity passed and the empty spec was what it refused


def enroll(cfg: AgentConfig, url: str, credential: str, pin: str | None = None, check: bool = True) -> dict:
    try:
        auth.client_key(credential)
    except ValueError as e:
        raise ConfigError(f"--credential: {e}") from None
    seen = None
    if check:
        try:
            seen = asyncio.run(_probe(url, cfg.robot_id, credential, pin, cfg.link.ca_file))
        except FleetError:
            raise
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            raise ConfigError(f"cannot reach the learner at {url}: {e}") from None
    _write_secret(cfg.link.credential_file or cfg.state_dir / CREDENTIAL, credential + "\n")
    record = {"url": url, "robot_id": cfg.robot_id, "pin_sha256": pin or seen}
    atomic_write(cfg.state_dir / LEARNER, json.dumps(record, indent=1).encode())
    return record
