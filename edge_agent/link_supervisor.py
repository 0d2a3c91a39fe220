"""The control process's side of the link process: start it, restart it when it dies, talk to it.

The link process (:mod:`edge_agent.link_process`) holds the websocket and the
policy download. If it crashes, is killed or stalls, the control process goes
on ticking and spooling; a dead link process is started again (its spool view
is rebuilt from disk and the learner's welcome says where to resume, so nothing
is sent twice into the buffer and nothing is skipped).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from typing import Any, Callable

from shared.lograte import LogLimiter

from .link_ipc import Channel, open_channel

log = logging.getLogger("fleetrl.agent")
_LOGS = LogLimiter(30.0)

RESTART_MIN_S = 0.5
RESTART_MAX_S = 10.0


class LinkSupervisor:
    """``hello()`` builds the first message for each new link process (the spool's state then);
    ``handlers[kind](payload)`` take what it sends (on the event loop)."""

    def __init__(self, hello: Callable[[], dict[str, Any]], handlers: dict[str, Callable[[Any], Any]]):
        self.hello, self.handlers = hello, handlers
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit = ""
        self._ch: Channel | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._drained: asyncio.Future[int] | None = None
        self.started = asyncio.Event()

    def send(self, kind: str, payload: Any = None) -> None:
        """Never waits; dropped while no link process runs (the next hello carries the state)."""
        if self._ch is not None:
            self._ch.send(kind, payload)

    async def run(self) -> None:
        delay = RESTART_MIN_S
        while not self._stopping:
            t0 = asyncio.get_running_loop().time()
            rc = await self._one()
            if self._stopping:
                return
            self.restarts += 1
            self.last_exit = f"exit status {rc}"
            if asyncio.get_running_loop().time() - t0 > 30:
                delay = RESTART_MIN_S
            _LOGS.log(log, logging.ERROR, ("link_process_exited",), "event=link_process_exited rc=%s "
                      "action=restarting_in_s=%.1f restarts=%d (the robot keeps acting and spooling)", rc, delay, self.restarts)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    async def _one(self) -> int | None:
        mine, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_agent.link_process", "--fd", str(theirs.fileno()), "--parent", str(os.getpid()),
                pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            mine.close()
            log.error("event=link_process_start_failed error=%r", str(e))
            return None
        finally:
            theirs.close()
        self._proc, self.pid = proc, proc.pid
        ch = self._ch = await open_channel(mine)
        ch.send("hello", self.hello())
        self.started.set()
        log.info("event=link_process_started pid=%d", proc.pid)
        try:
            while (msg := await ch.receive()) is not None:
                kind, payload = msg
                if kind == "drained" and self._drained is not None and not self._drained.done():
                    self._drained.set_result(payload)
                    continue
                handler = self.handlers.get(kind)
                if handler is not None:
                    handler(payload)
        finally:
            self._ch = None
            ch.close()
        return await proc.wait()

    async def drain(self, timeout: float, reason: str) -> int | None:
        """Ask the link process to wait (up to ``timeout``) until the learner acked everything spooled,
        say goodbye and exit. Returns the acked mark it reached, or None if it did not answer."""
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None or self._ch is None:
            return None
        self._drained = asyncio.get_running_loop().create_future()
        self.send("drain", (timeout, reason))
        done: int | None = None
        try:
            done = await asyncio.wait_for(asyncio.shield(self._drained), timeout + 5)
        except asyncio.TimeoutError:
            log.warning("event=link_process_unresponsive action=killing pid=%d", proc.pid)
        await self.stop()
        return done

    async def stop(self) -> None:
        """End the link process (after a drain, or at once)."""
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        if self._ch is not None:
            self._ch.close()  # its receive loop ends: it exits by itself
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
