"""Reassembles a policy sent in parts; survives a cut link (the next hello
asks the cloud to resume from the bytes already here).

The rule lives sans-I/O in :class:`shared.protocol.stream.PolicyReceiver`; this
name stays for the callers that know it (the bench, older tests).

:class:`PolicyFiles` gives the receiver file-backed buffers: the link process
reassembles straight into a file in the policy inbox (a shared mapping), so when
the last part lands the blob is already where the control process maps it
(:func:`shared.weights.load_weights_file`): no second write, no second copy.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from shared.errors import WeightsError
from shared.protocol.stream import PolicyReceiver

PolicyDownload = PolicyReceiver

PART_SUFFIX = ".part"
DONE_SUFFIX = ".safetensors"

__all__ = ["PolicyDownload", "PolicyFiles"]


class PolicyFiles:
    """``buffers`` for :class:`PolicyReceiver`: each download is ``inbox/policy-v{N}.part``,
    its space reserved up front (a full disk is a WeightsError now, not a SIGBUS when a
    page is written) and mapped shared. One download at a time: a new one removes the
    previous unfinished file; :meth:`finish` hands a whole one over."""

    def __init__(self, inbox: Path):
        self.inbox = Path(inbox)
        self._current: Path | None = None

    def __call__(self, version: int, size: int) -> memoryview:
        self.discard()
        path = self.inbox / f"policy-v{version}{PART_SUFFIX}"
        try:
            self.inbox.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                buf = memoryview(bytearray())
                if size:
                    os.posix_fallocate(fd, 0, size)
                    buf = memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                                               prot=mmap.PROT_READ | mmap.PROT_WRITE))
            finally:
                os.close(fd)  # the mapping keeps the file
        except OSError as e:
            try:
                path.unlink(missing_ok=True)  # a torn reservation must not hold the space
            except OSError:
                pass
            raise WeightsError(f"cannot hold policy v{version} ({size} bytes) in {self.inbox}: "
                               f"{e.strerror or e}", code="disk_error") from None
        self._current = path
        return buf

    def finish(self, version: int) -> Path:
        """The download of ``version`` is whole (the receiver returned it): it becomes
        ``policy-v{N}.safetensors``, the control process's to map and unlink; returns that path."""
        done = self.inbox / f"policy-v{version}{DONE_SUFFIX}"
        try:
            os.replace(self.inbox / f"policy-v{version}{PART_SUFFIX}", done)  # the mapping stays valid
        except OSError as e:
            raise WeightsError(f"cannot keep policy v{version} in {self.inbox}: {e.strerror or e}",
                               code="disk_error") from None
        self._current = None
        return done

    def discard(self) -> None:
        """Remove the unfinished download (a newer version replaces it, or the link process stops)."""
        if self._current is not None:
            self._current.unlink(missing_ok=True)
            self._current = None

    def clear(self) -> None:
        """Remove downloads a killed link process left behind (call at start)."""
        for stale in self.inbox.glob(f"policy-v*{PART_SUFFIX}"):
            stale.unlink(missing_ok=True)
