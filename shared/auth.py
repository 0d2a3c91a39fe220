"""Robot credentials, challenge-response style (after SCRAM, RFC 5802).

The robot holds a random 32-byte key. The cloud stores only its SHA-256 (the
"stored key"), so a leaked robot table does not let anyone log in. Each link
starts with a fresh server nonce, so a captured handshake cannot be replayed.
The welcome carries the server's own signature over the same exchange, so
the robot knows it reached the learner it enrolled with, not an impostor.
Pure functions: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

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


def _message(robot_id: str, server_nonce: str, client_nonce: str) -> bytes:
    return f"fleetrl-auth-v1|{robot_id}|{server_nonce}|{client_nonce}".encode()


def prove(key: bytes, robot_id: str, server_nonce: str, client_nonce: str) -> str:
    sig = hmac.new(stored_key(key), _message(robot_id, server_nonce, client_nonce), hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(key, sig)).hex()


def verify(stored: bytes, robot_id: str, server_nonce: str, client_nonce: str, proof_hex: str) -> bool:
    """True when ``proof_hex`` shows knowledge of the key behind ``stored``."""
    try:
        proof = bytes.fromhex(proof_hex)
    except ValueError:
        return False
    if len(proof) != KEY_BYTES:
        return False
    sig = hmac.new(stored, _message(robot_id, server_nonce, client_nonce), hashlib.sha256).digest()
    key = bytes(a ^ b for a, b in zip(proof, sig))
    return hmac.compare_digest(hashlib.sha256(key).digest(), stored)


def server_signature(stored: bytes, robot_id: str, server_nonce: str, client_nonce: str) -> str:
    return hmac.new(stored, b"server|" + _message(robot_id, server_nonce, client_nonce), hashlib.sha256).hexdigest()
