"""One event per line, key=value: what journald and grep both read well."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "INFO", stream=None) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=stream or sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        force=True,
    )
