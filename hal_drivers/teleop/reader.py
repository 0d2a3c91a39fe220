"""A daemon thread that reads one file descriptor whenever it has data, until stopped.

Devices with a file descriptor (a terminal, /dev/input/eventN) wait in
``select`` on it and on a wake-up pipe, so :meth:`FdReader.stop` ends the
thread at once without polling or closing the fd under its feet. However the
thread ends other than by ``stop`` (EOF, an error, a bug in a decoder),
``on_lost`` runs: the owner drops its held input, so a take-over button that
was down when the device failed cannot keep the robot under a frozen command.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable

log = logging.getLogger("fleetrl.teleop")


class FdReader:
    """Calls ``on_readable()`` each time ``fd`` is readable; it returns False to stop (EOF, device gone).

    ``on_lost()`` is called once if the thread ends by itself (False, or an exception)."""

    def __init__(self, fd: int, on_readable: Callable[[], bool], name: str,
                 on_lost: Callable[[], None] | None = None):
        self._fd = fd
        self._on_readable = on_readable
        self._on_lost = on_lost
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.error: BaseException | None = None  # what ended the thread, if not stop()

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._wake_r], [], [])
                if self._wake_r in ready:
                    return  # stop(): the owner is closing the device
                if not self._on_readable():
                    break
        except Exception as e:  # the device failed (unplugged, hung up): the owner sees error and zero input
            self.error = e
            log.warning("event=teleop_reader_stopped thread=%s error=%r", self._thread.name, e)
        if self._on_lost is not None:
            self._on_lost()

    def stop(self, timeout: float = 2.0) -> None:
        if self._wake_w < 0:
            return
        os.write(self._wake_w, b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1
