"""The table of enrolled robots: stored keys (hashes only), expiry, revocation.

``robots.json`` in the data directory, mode 0600, replaced atomically. The
CLI edits it; a running learner re-reads it when told (``/admin/reload``) and
on its own when the file changes (``cloud.access``), and closes the links of
robots that lost their right to connect.
"""

from __future__ import annotations

import json
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


class RobotRegistry:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, RobotEntry] = {}
        self.reload()

    def reload(self) -> None:
        if not self.path.exists():  # removed: nobody is enrolled any more
            self.entries = {}
            return
        data = json.loads(self.path.read_text())
        self.entries = {k: RobotEntry(**v) for k, v in data.get("robots", {}).items()}

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
        old = self.entries.get(name)
        if old is not None and not old.revoked and not rotate:
            raise ConfigError(f"robot {name!r} is already enrolled; pass --rotate to issue a new credential")
        cred = auth.new_credential()
        expires = time.time() + expires_days * 86400 if expires_days else None
        self.entries[name] = RobotEntry(name, auth.stored_key(auth.client_key(cred)).hex(), time.time(), expires)
        self._save()
        return cred

    def revoke(self, name: str) -> None:
        if name not in self.entries:
            raise ConfigError(f"no robot named {name!r} is enrolled")
        self.entries[name].revoked = True
        self._save()
