"""Ray's temp root, made to exist before Ray needs it.

Ray writes ``ray_current_cluster`` under its default temp root (``$RAY_TMPDIR``,
else ``$TMPDIR``, else ``/tmp``, plus ``ray/``) even when a node names its own
``temp_dir``; on a fresh machine that folder does not exist and starting a
local cluster fails. Callers that start Ray locally call this first.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def default_ray_temp_root() -> Path:
    """The folder Ray uses when no temp_dir is given (mirrors ray._common.utils)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    elif sys.platform.startswith(("linux", "darwin")):
        base = "/tmp"
    else:
        base = tempfile.gettempdir()
    return Path(base) / "ray"


def ensure_ray_temp_root() -> Path:
    root = default_ray_temp_root()
    root.mkdir(parents=True, exist_ok=True)
    return root
