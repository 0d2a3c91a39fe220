"""systemd integration: sd_notify, the watchdog heartbeat, signals, config reload.

Kept apart from the daemon so each piece can be tested on its own, and
dependency-free: sd_notify is one datagram on an AF_UNIX socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Mapping

from shared.config import AGENT_RELOADABLE, AgentConfig

log = logging.getLogger("fleetrl.service")

# Keys SIGHUP may change in a running agent (defined with the config models, which
# the docs generator also reads); anything else needs a restart.
RELOADABLE = AGENT_RELOADABLE


class Notifier:
    """Sends sd_notify(3) messages to ``$NOTIFY_SOCKET``; a no-op when systemd did not set it.

    Messages are best effort: a lost notify must never stop a robot.
    """

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):  # abstract namespace
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the control thread and the event loop both send

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        data = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self.address)
                return True
            except OSError as e:
                log.debug("event=sd_notify_failed error=%r", e)
                return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_period(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of systemd's WatchdogSec), or None when off."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Heartbeat:
    """Called by the control loop on every tick (and while it deliberately holds).

    It pings systemd's watchdog at most once per ``period``: a loop that hangs
    stops calling it, the pings stop, and systemd restarts the agent. The
    first call also runs ``on_first`` (the daemon then says READY), so
    readiness means "the loop has run", not "the process has started".
    """

    def __init__(self, notifier: Notifier, period: float | None, on_first: Callable[[], Any] = lambda: None):
        self.notifier, self.period, self.on_first = notifier, period, on_first
        self._next = 0.0
        self._first = True
        self.pings = 0

    def __call__(self) -> None:
        if self._first:
            self._first = False
            self.on_first()
        if self.period is None:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.period
            if self.notifier.send("WATCHDOG=1"):
                self.pings += 1


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
