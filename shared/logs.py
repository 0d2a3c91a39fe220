"""One event per line, key=value: what journald and grep both read well.

Under systemd (``$JOURNAL_STREAM`` names stderr) lines carry a ``<N>`` syslog
priority prefix, so journald records the level, and no timestamp, which it
adds itself. A traceback never spans lines: it is folded into one
``traceback="..."`` field, so one event stays one journal entry.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _to_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd connected (device:inode match)."""
    spec = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in spec.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class OneLineFormatter(logging.Formatter):
    def __init__(self, journal: bool):
        fmt = "level=%(levelname)s logger=%(name)s %(message)s"
        super().__init__(fmt if journal else "%(asctime)s " + fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        exc, record.exc_info, record.exc_text = record.exc_info, None, None
        try:
            line = super().format(record).replace("\n", "\\n")
        finally:
            record.exc_info = exc
        if exc and exc[0] is not None:
            tb = self.formatException(exc).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            line += f' traceback="{tb}"'
        if self.journal:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def setup(level: str = "INFO", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(_to_journal(stream)))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)


def set_level(level: str) -> None:
    """Change the level of a running process (SIGHUP reload)."""
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))
