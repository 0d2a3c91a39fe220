"""The weight publisher: holds the newest policy, persists it, tells links.

Each robot link waits on :meth:`wait_offered` and sends the newest version it
has not sent; a robot that was slow or offline skips straight to the latest.
The newest blob is kept on disk so a restarted learner serves it at once and
never reuses a version number.

The write runs while the links already send the blob: a link sends every part
but the last at once, and the last only once :meth:`written` says the blob is
on disk. So a robot never completes a version the learner could lose (a failed
write keeps robots on the previous version), yet the fsync overlaps the transfer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from shared.fsutil import atomic_write
from shared.lograte import LogLimiter
from shared.errors import WeightsError
from shared.weights import WeightsBlob, sha256, weights_version

from .policy_frames import PolicyFrames

log = logging.getLogger("fleetrl.publisher")


class WeightPublisher:
    def __init__(self, policy_dir: Path, group: str = ""):
        self.dir = Path(policy_dir)
        self.group = group  # its embodiment group, for the log (``cloud.groups``)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.latest: WeightsBlob | None = self._load()  # the newest blob on disk
        self.pending: WeightsBlob | None = None  # the blob being written (and already sent, but its last part)
        self.frames = PolicyFrames()  # its parts, encoded once for every link
        self.failures = 0  # publishes whose write failed (shown in /status and the metrics)
        self.last_error = ""  # the latest failure, cleared by the next good publish
        self._logs = LogLimiter(60.0)  # a full disk fails every publish: one line a minute per kind
        self._cond = asyncio.Condition()
        self._writing = asyncio.Lock()

    @property
    def version(self) -> int:
        """The newest version on disk: what robots may hold, and what a restart serves."""
        return self.latest.version if self.latest else 0

    @property
    def offered(self) -> int:
        """The newest version links send: the one being written, else :attr:`version`."""
        return self.pending.version if self.pending else self.version

    def _load(self) -> WeightsBlob | None:
        """The newest persisted policy. The blob and its JSON are written one after the other
        (each atomically); a crash or a full disk between the two leaves a complete blob beside
        the older JSON. The blob carries its own version, so it wins: dropping it would restart
        training under version numbers the robots already hold."""
        meta, data = self.dir / "latest.json", self.dir / "latest.safetensors"
        if not data.exists():
            return None
        blob = data.read_bytes()
        digest = sha256(blob)
        try:
            m = json.loads(meta.read_text()) if meta.exists() else {}
        except ValueError:
            m = {}
        if isinstance(m, dict) and m.get("sha256") == digest:
            return WeightsBlob(int(m["version"]), digest, blob)
        try:
            version = weights_version(blob)
            noted = int(m.get("version", 0)) if isinstance(m, dict) else 0
        except (WeightsError, ValueError, TypeError) as e:
            log.error("event=stored_policy_corrupt path=%s error=%r action=no_policy_to_serve", data, str(e))
            return None
        if version <= noted:  # the JSON describes this very version with another digest: the bytes rotted
            log.error("event=stored_policy_corrupt path=%s version=%d action=no_policy_to_serve", data, version)
            return None
        log.warning("event=stored_policy_recovered path=%s version=%d (its JSON was older or missing: "
                    "the learner stopped between the two writes)", data, version)
        return WeightsBlob(version, digest, blob)

    def _persist(self, blob: WeightsBlob) -> None:
        try:
            atomic_write(self.dir / "latest.safetensors", blob.data)
            atomic_write(self.dir / "latest.json", json.dumps({"version": blob.version, "sha256": blob.sha256}).encode())
        except OSError:
            for name in ("latest.safetensors.tmp", "latest.json.tmp"):  # a torn temp file must not hold the space
                try:
                    (self.dir / name).unlink(missing_ok=True)
                except OSError:
                    pass
            raise

    async def publish(self, blob: WeightsBlob) -> bool:
        """Hand out and persist at once (the last part of each link waits for the write,
        see :meth:`written`). A failed write (disk full) keeps robots on the previous version: it is logged (once a minute per kind), counted and shown
        in /status, and the next publish tries again."""
        async with self._writing:  # one write at a time: they share temp names, and the newest must land last
            return await self._publish(blob)

    async def _publish(self, blob: WeightsBlob) -> bool:
        if blob.version <= self.version:
            return False
        async with self._cond:  # links start sending it now; its last part waits for the write
            self.pending = blob
            self._cond.notify_all()
        try:
            await asyncio.to_thread(self._persist, blob)
        except OSError as e:
            self.failures += 1
            self.last_error = f"v{blob.version}: {type(e).__name__}: {e.strerror or e}"
            self._logs.log(log, logging.ERROR, ("publish_failed", type(e), e.errno),
                      "event=publish_failed version=%d error=%r failures=%d action=robots_stay_on_v%d",
                      blob.version, e.strerror or str(e), self.failures, self.version)
            async with self._cond:
                self.pending = None
                self._cond.notify_all()
            return False
        if self.last_error:
            log.info("event=publish_recovered version=%d failures_so_far=%d", blob.version, self.failures)
            self.last_error = ""
        async with self._cond:
            self.latest, self.pending = blob, None
            self._cond.notify_all()
        log.info("event=policy_published version=%d bytes=%d group=%s", blob.version, len(blob.data), self.group or "-")
        return True

    async def wait_newer(self, than: int) -> WeightsBlob:
        """The newest blob on disk, once its version is above ``than``."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.version > than)
            assert self.latest is not None
            return self.latest

    async def wait_offered(self, than: int) -> WeightsBlob:
        """The newest blob to send (maybe still being written), once its version is above ``than``."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.offered > than)
            blob = self.pending or self.latest
            assert blob is not None
            return blob

    async def written(self, blob: WeightsBlob) -> bool:
        """Wait for ``blob``'s write; True if it is the newest on disk (send its last part),
        False if the write failed or a newer one took its place (the link cuts it)."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.pending is not blob)
            return self.latest is blob
