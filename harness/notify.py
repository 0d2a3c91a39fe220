"""What systemd sees of a ``Type=notify`` daemon: a datagram socket to pass as ``NOTIFY_SOCKET``."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Callable


class NotifySocket:
    """Every datagram, with its arrival time (bound in the abstract namespace: ``NOTIFY_SOCKET=@name``)."""

    def __init__(self) -> None:
        self.name = f"fleetrl-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.msgs: list[tuple[float, dict[str, str]]] = []

    @property
    def env(self) -> str:
        """The value for ``NOTIFY_SOCKET``."""
        return "@" + self.name

    def read_until(self, pred: Callable[[dict[str, str]], object], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536).decode()
            except socket.timeout:
                break
            self.msgs.append((time.monotonic(), dict(ln.split("=", 1) for ln in data.split("\n") if "=" in ln)))
            if pred(self.msgs[-1][1]):
                return True
        return False

    def times(self, key: str) -> list[float]:
        return [t for t, m in self.msgs if key in m]

    def values(self, key: str) -> list[str]:
        return [m[key] for _, m in self.msgs if key in m]

    def count_after(self, key: str, since: float) -> int:
        return sum(1 for t in self.times(key) if t > since)

    def close(self) -> None:
        self.sock.close()
