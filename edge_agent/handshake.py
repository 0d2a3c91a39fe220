"""The robot's side of opening a link, shared by the uplink, `enroll` and `check`:
TLS trust (a CA, or the learner's pinned certificate), the pin check, and the
challenge -> hello -> welcome exchange."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path
from typing import Any

from shared.protocol import Challenge, EdgeConnection, Reject, Welcome


def tls_context(url: str, ca_file: Path | None, trust_by_pin: bool) -> ssl.SSLContext | None:
    """None for ws://; for wss://, verify against ``ca_file`` (or the system CAs), unless
    there is no CA and the certificate is trusted by its pin (checked after connecting)."""
    if not url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if trust_by_pin and ca_file is None:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a self-signed learner certificate is fine
    return ctx


def normalize_pin(pin: str | None) -> str:
    return (pin or "").replace(":", "").lower()


def peer_sha256(ws: Any) -> str | None:
    """SHA-256 of the learner certificate's DER bytes; None on a plain ws:// link."""
    tls = ws.transport.get_extra_info("ssl_object")
    return None if tls is None else hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


async def open_link(ws: Any, conn: EdgeConnection, timeout: float, policy_version: int = 0,
                    partial: tuple[int, int] = (0, 0)) -> Welcome | Reject:
    """Answer the learner's challenge; its Welcome, or the Reject it sent instead. The proof and
    the welcome's signature are bound to the certificate this link sees (a relay fails both)."""
    msg = conn.receive(await asyncio.wait_for(ws.recv(), timeout))
    if isinstance(msg, Challenge):
        await ws.send(conn.hello(policy_version, partial=partial, channel=peer_sha256(ws) or ""))
        msg = conn.receive(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(msg, (Welcome, Reject))  # the connection refuses anything else at this stage
    return msg
