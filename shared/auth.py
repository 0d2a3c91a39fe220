"""Robot credentials, challenge-response style (after SCRAM, RFC 5802).

The robot holds a random 32-byte key. The cloud stores only its SHA-256 (the
"stored key"), so a leaked robot table does not let anyone log in. Each link
starts with a fresh server nonce, so a captured handshake cannot be replayed.
The welcome carries the server's own signature over the same exchange, so
the robot knows it reached the learner it enrolled with, not an impostor.
Both cover the SHA-256 of the learner's TLS certificate as each end sees it
(channel binding): a relay that terminates TLS with its own certificate and
passes the exchange through makes the two ends disagree, and both refuse.
Pure functions, except reading the learner's own certificate file.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import ssl
from pathlib import Path

PREFIX = "fr1_"
KEY_BYTES = 32


def new_credential() -> str:
    return PREFIX + base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode().rstrip("=")


def client_key(credential: str) -> bytes:
    """The raw key in a credential string; ValueError if it is not one of ours."""
    if not credential.startswith(PREFIX):
        raise ValueError("not a fleetrl credential (expected it to start with fr1_)")
    body = credential[len(PREFIX) :]
    key = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if len(key) != KEY_BYTES:
        raise ValueError("credential has the wrong length")
    return key


def stored_key(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def nonce() -> str:
    return os.urandom(16).hex()


def _message(robot_id: str, server_nonce: str, client_nonce: str, channel: str) -> bytes:
    return f"fleetrl-auth-v1|{robot_id}|{server_nonce}|{client_nonce}|{channel}".encode()


def prove(key: bytes, robot_id: str, server_nonce: str, client_nonce: str, channel: str = "") -> str:
    """The robot's proof; ``channel`` is the SHA-256 (hex) of the TLS certificate the robot
    sees ("" on plain ws://), so a relay that shows its own certificate cannot pass it on."""
    sig = hmac.new(stored_key(key), _message(robot_id, server_nonce, client_nonce, channel), hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(key, sig)).hex()


def verify(stored: bytes, robot_id: str, server_nonce: str, client_nonce: str, proof_hex: str, channel: str = "") -> bool:
    """True when ``proof_hex`` shows knowledge of the key behind ``stored``, over this ``channel``
    (the learner's own certificate SHA-256)."""
    try:
        proof = bytes.fromhex(proof_hex)
    except ValueError:
        return False
    if len(proof) != KEY_BYTES:
        return False
    sig = hmac.new(stored, _message(robot_id, server_nonce, client_nonce, channel), hashlib.sha256).digest()
    key = bytes(a ^ b for a, b in zip(proof, sig))
    return hmac.compare_digest(hashlib.sha256(key).digest(), stored)


def server_signature(stored: bytes, robot_id: str, server_nonce: str, client_nonce: str, channel: str = "") -> str:
    msg = b"server|" + _message(robot_id, server_nonce, client_nonce, channel)
    return hmac.new(stored, msg, hashlib.sha256).hexdigest()


def check_server_signature(stored: bytes, robot_id: str, server_nonce: str, client_nonce: str, channel: str,
                           signature: str) -> bool:
    """The robot's check of the welcome's signature, in constant time."""
    expected = server_signature(stored, robot_id, server_nonce, client_nonce, channel)
    return hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace"))


@functools.lru_cache(maxsize=8)
def certificate_sha256(pem_file: Path | None) -> str:
    """SHA-256 (hex) of the DER bytes of the first certificate in ``pem_file`` (the one a
    TLS client sees as the peer certificate); "" for none (plain ws://). Read once: the
    server loads its certificate once too."""
    if pem_file is None:
        return ""
    text = Path(pem_file).read_text()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError(f"{pem_file}: no PEM certificate in it")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)])).hexdigest()
