"""sd_notify(3) for both daemons: READY, STATUS, WATCHDOG and STOPPING to systemd.

Daemon plumbing like ``fsutil``, ``logs`` and ``metrics``, not protocol: the
robot's ``edge_agent.service`` and the learner's ``cloud.service`` differ only
in what proves them alive (the control loop's tick, the trainer's progress).
Dependency-free: a notification is one datagram on the AF_UNIX socket systemd
names in ``$NOTIFY_SOCKET``; without it (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Mapping

log = logging.getLogger("fleetrl.service")


class Notifier:
    """Sends sd_notify(3) messages to ``$NOTIFY_SOCKET``; a no-op when systemd did not set it.

    Messages are best effort: a lost notify must never stop a daemon.
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
        self._lock = threading.Lock()  # a worker thread and the event loop may both send

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
    """Called by the loop that proves the daemon alive, on every pass (and while it deliberately holds).

    It pings systemd's watchdog at most once per ``period``: a loop that hangs
    stops calling it, the pings stop, and systemd restarts the daemon. The
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
