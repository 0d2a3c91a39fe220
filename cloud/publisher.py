"""The weight publisher: holds the newest policy, persists it, tells links.

Each robot link waits on :meth:`wait_newer` and sends the newest version it
has not sent; a robot that was slow or offline skips straight to the latest.
The newest blob is kept on disk so a restarted learner serves it at once and
never reuses a version number.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from shared.fsutil import atomic_write
from shared.weights import WeightsBlob, sha256

log = logging.getLogger("fleetrl.publisher")


class WeightPublisher:
    def __init__(self, policy_dir: Path):
        self.dir = Path(policy_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.latest: WeightsBlob | None = self._load()
        self._cond = asyncio.Condition()

    @property
    def version(self) -> int:
        return self.latest.version if self.latest else 0

    def _load(self) -> WeightsBlob | None:
        meta, data = self.dir / "latest.json", self.dir / "latest.safetensors"
        if not meta.exists() or not data.exists():
            return None
        m = json.loads(meta.read_text())
        blob = data.read_bytes()
        if sha256(blob) != m["sha256"]:
            log.error("event=stored_policy_corrupt path=%s", data)
            return None
        return WeightsBlob(int(m["version"]), m["sha256"], blob)

    def _persist(self, blob: WeightsBlob) -> None:
        atomic_write(self.dir / "latest.safetensors", blob.data)
        atomic_write(self.dir / "latest.json", json.dumps({"version": blob.version, "sha256": blob.sha256}).encode())

    async def publish(self, blob: WeightsBlob) -> None:
        if blob.version <= self.version:
            return
        await asyncio.to_thread(self._persist, blob)
        async with self._cond:
            self.latest = blob
            self._cond.notify_all()
        log.info("event=policy_published version=%d bytes=%d", blob.version, len(blob.data))

    async def wait_newer(self, than: int) -> WeightsBlob:
        async with self._cond:
            await self._cond.wait_for(lambda: self.version > than)
            assert self.latest is not None
            return self.latest
