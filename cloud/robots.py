"""The table of enrolled robots: stored keys (hashes only), expiry, revocation.

``robots.json`` in the data directory, mode 0600, replaced atomically. The
CLI edits it; a running learner re-reads it when told (``/admin/reload``) and
on its own when the file changes (``cloud.access``), and closes the links of
robots that lost their right to connect.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shared import auth
from shared.errors import ConfigError
from shared.fsutil import atomic_write
from shared.ids import RULE as ID_RULE
from shared.protocol.messages import ROBOT_ID


@dataclass
class RobotEntry:
    name: str
    stored_key: str  # hex sha256 of the robot's key
    created: float
    expires: float | None = None
    revoked: bool = False

    def refusal(self, now: float | None = None) -> tuple[str, str] | None:
        """(code, message) when this robot may not connect, else None."""
        if self.revoked:
            return "revoked", f"robot {self.name!r} was revoked"
        if self.expires is not None and (now or time.time()) > self.expires:
            return "credential_expired", f"robot {self.name!r}'s credential expired; rotate it with `cloud-learner robots add {self.name} --rotate`"
        return None


def _entry(path: Path, name: object, v: object) -> RobotEntry:
    """One table entry, every field checked: a hand edit that breaks one must be refused, not
    crash the checks that enforce revocation for everyone else."""
    where = f"{path}: robot {name!r}"
    if not isinstance(name, str) or not ROBOT_ID.fullmatch(name):
        raise ConfigError(f"{where}: the name must be {ID_RULE}")
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: an entry is a table of name, stored_key, created, expires and revoked")
    unknown = sorted(set(v) - {"name", "stored_key", "created", "expires", "revoked"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    key = v.get("stored_key")
    if not isinstance(key, str) or len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ConfigError(f"{where}: stored_key must be 64 lowercase hex digits")
    if v.get("name", name) != name:
        raise ConfigError(f"{where}: its name field says {v.get('name')!r}")

    def number(field: str, optional: bool) -> float | None:
        x = v.get(field)
        if x is None and optional:
            return None
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ConfigError(f"{where}: {field} must be a number of seconds since the epoch{' or null' if optional else ''}")
        return float(x)

    revoked = v.get("revoked", False)
    if not isinstance(revoked, bool):
        raise ConfigError(f"{where}: revoked must be true or false")
    created = number("created", optional=False)
    assert created is not None
    return RobotEntry(name, key, created, number("expires", optional=True), revoked)


class RobotRegistry:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, RobotEntry] = {}
        self.invalid: dict[str, str] = {}  # name -> why its entry was refused (fails closed)
        self.reload()

    def reload(self) -> None:
        """Re-read the table. A file that is not a table at all raises ConfigError and the table
        in memory stays as it was; an entry with a bad field fails closed: that robot is treated
        as not enrolled (refused, its links closed) and named in ``invalid``, the rest apply."""
        if not self.path.exists():  # removed: nobody is enrolled any more
            self.entries, self.invalid = {}, {}
            return
        try:
            data = json.loads(self.path.read_text())
        except ValueError as e:
            raise ConfigError(f"{self.path}: not valid JSON: {e}") from None
        robots = data.get("robots", {}) if isinstance(data, dict) else None
        if not isinstance(robots, dict):
            raise ConfigError(f"{self.path}: expected {{\"robots\": {{name: entry}}}}")
        entries, invalid = {}, {}
        for k, v in robots.items():
            try:
                entries[k] = _entry(self.path, k, v)
            except ConfigError as e:
                invalid[str(k)] = e.message
        self.entries, self.invalid = entries, invalid

    def _require_valid(self) -> None:
        """The CLI rewrites the whole file: refuse rather than drop an entry someone broke by hand."""
        if self.invalid:
            raise ConfigError("; ".join(self.invalid.values()) + " (fix or remove it by hand first)")

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"robots": {k: asdict(v) for k, v in self.entries.items()}}, indent=1).encode()
        atomic_write(self.path, data, mode=0o600)  # 0600 from creation: never readable by others, not even briefly

    def get(self, name: str) -> RobotEntry | None:
        return self.entries.get(name)

    def add(self, name: str, expires_days: float | None = None, rotate: bool = False) -> str:
        """Issue a credential for ``name``; returned once, only its hash is kept."""
        if not ROBOT_ID.fullmatch(name):
            raise ConfigError(f"robot name {name!r}: use {ID_RULE}")
        self._require_valid()
        old = self.entries.get(name)
        if old is not None and not old.revoked and not rotate:
            raise ConfigError(f"robot {name!r} is already enrolled; pass --rotate to issue a new credential")
        cred = auth.new_credential()
        expires = time.time() + expires_days * 86400 if expires_days else None
        self.entries[name] = RobotEntry(name, auth.stored_key(auth.client_key(cred)).hex(), time.time(), expires)
        self._save()
        return cred

    def revoke(self, name: str) -> None:
        self._require_valid()
        if name not in self.entries:
            raise ConfigError(f"no robot named {name!r} is enrolled")
        self.entries[name].revoked = True
        self._save()
