"""systemd integration: sd_notify, the watchdog heartbeat, signals, config reload.

Kept apart from the daemon so each piece can be tested on its own, and
dependency-free: sd_notify is one datagram on an AF_UNIX socket. The
notifier and the heartbeat are shared with the learner (``shared.sdnotify``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any, Callable

from shared.config import AGENT_RELOADABLE, AgentConfig
from shared.sdnotify import Heartbeat as Heartbeat, Notifier as Notifier, watchdog_period as watchdog_period

log = logging.getLogger("fleetrl.service")

# Keys SIGHUP may change in a running agent (defined with the config models, which
# the docs generator also reads); anything else needs a restart.
RELOADABLE = AGENT_RELOADABLE


class Signals:
    """SIGTERM/SIGINT: the first drains, a second exits at once; SIGHUP reloads.

    Installed on the asyncio loop, so handlers run as ordinary callbacks, never
    inside arbitrary code.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[int], Any], on_reload: Callable[[], Any]):
        self.loop, self.on_stop, self.on_reload = loop, on_stop, on_reload
        self.stopping = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _stop(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.stopping:
            # The operator insists: leave now. Spooled chunks are already on disk
            # and are resent after the next start; only the chunk in memory is lost.
            log.warning("event=exit_now reason=second_%s", name.lower())
            logging.shutdown()
            sys.stderr.flush()
            os._exit(128 + sig)
        self.stopping = True
        log.info("event=stop_requested signal=%s action=drain", name)
        self.on_stop(sig)

    def _reload(self) -> None:
        if self.stopping:
            log.info("event=reload_ignored reason=stopping")
            return
        self.on_reload()

    def remove(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "options":  # driver options compare as one value
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def reload_plan(old: AgentConfig, new: AgentConfig) -> tuple[AgentConfig, list[str], list[str]]:
    """(config to run with, keys applied, keys refused) for a SIGHUP from ``old`` to ``new``.

    Only keys in :data:`RELOADABLE` change; every other difference is refused
    and keeps its running value, so a reload never half-reconfigures a robot.
    """
    a, b = _flatten(old.model_dump()), _flatten(new.model_dump())
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    applied = [k for k in changed if k in RELOADABLE]
    refused = [k for k in changed if k not in RELOADABLE]
    merged = old.model_dump()
    for key in applied:
        section, _, name = key.partition(".")
        merged[section][name] = b[key]
    return AgentConfig.model_validate(merged), applied, refused
