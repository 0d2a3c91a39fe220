"""Crash-safe file writes: temp name, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, fsync: bool = True, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never a mix.

    ``mode`` (e.g. 0o600 for a secret) applies from the temp file's creation, so
    no moment exists when the bytes are readable with the default umask's mode."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if mode is not None:
        tmp.unlink(missing_ok=True)  # a leftover temp file would keep its old mode
        fh = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb")
        os.fchmod(fh.fileno(), mode)  # the umask may only narrow it; say exactly what was asked
    else:
        fh = open(tmp, "wb")
    with fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)
