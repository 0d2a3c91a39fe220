"""What the control process tells the link process, and what it does with the answers.

The control process owns the spool and the policy; the link process streams
and downloads. This module holds the control side of that conversation: the
hello each new link process starts from, the records to send, the loop's
figures for the learner, and the handling of acks, lost records, welcomes,
policies and operator commands that come back. Everything runs on the control process's event loop;
slow work (fsync of the acked mark, mapping a policy) goes to worker threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from shared.tasks import cancel_and_reap

from .chunk_source import decode_actions
from .link_supervisor import LinkSupervisor
from .policy_inbox import clear, inboxes
from .remote_commands import RemoteCommands
from .spool import SpoolCorrupt

if TYPE_CHECKING:
    from .daemon import Agent

log = logging.getLogger("fleetrl.agent")

REPORT_S = 0.5  # how often the link process hears the loop's figures (for the learner and the metrics)
DOWN: dict[str, Any] = {"pid": None, "connected": False, "url": "", "reconnects": 0, "last_error": "",
                        "refused": "", "learner_holding": False, "policy_refused_reason": ""}


class LinkFeed:
    def __init__(self, agent: Agent, credential: str | None, pin: str | None,
                 on_policy: Callable[[int, str, Path], Coroutine[Any, Any, None]], on_ack: Callable[[], None]):
        self.agent, self.credential, self.pin = agent, credential, pin
        self.on_policy, self.on_ack = on_policy, on_ack
        self.state: dict[str, Any] = {**DOWN, "url": agent.cfg.link.urls[0]}
        self.stored_seq = agent.spool.last_seq  # spooled and counted in the ledger: may be sent
        self.inboxes = inboxes(agent.cfg.state_dir)
        self._ack_to = 0
        self._ack_wanted = asyncio.Event()
        self._policies: set[asyncio.Task[None]] = set()
        self.commands = RemoteCommands(agent.operator, lambda: agent.cfg.control.remote_commands)
        self.supervisor = LinkSupervisor(self.hello, {
            "acked": self._acked, "adopt": self._adopt, "lost": self._lost, "link": self._link,
            "welcome": lambda v: agent.policy.learner_announced(v), "policy": self._policy,
            "command": self.commands.handle,  # an operator command from the learner
            "act_chunk": self._act_chunk,  # the learner's answer to an act request (policy.where = "cloud")
        })
        self._tasks: tuple[asyncio.Task, ...] = ()

    # ---------------------------------------------------------------- to the link process

    def hello(self) -> dict[str, Any]:
        a, sp = self.agent, self.agent.spool
        self.state = {**DOWN, "url": a.cfg.link.urls[0], "reconnects": self.state["reconnects"]}
        return {
            "cfg": a.cfg.model_dump(mode="json"), "spec": a.spec.to_dict(), "desc": a.desc.to_dict(),
            "limits": dataclasses.asdict(a.limits),
            "credential": self.credential, "pin": self.pin, "log_level": a.cfg.service.log_level,
            "report": dict(a.status()), "policy_version": a.policy.version, "policy_inboxes": [str(p) for p in self.inboxes],
            "limit_seq": self.stored_seq,
            "spool": {"dir": str(sp.dir), "acked_seq": sp.acked_seq, "last_seq": sp.last_seq, **self._spool_state()},
        }

    def _spool_state(self) -> dict[str, Any]:
        sp = self.agent.spool
        return {"bytes": sp.bytes, "quota_bytes": sp.quota_bytes, "lost": [list(r) for r in sp.lost]}

    def spooled(self, seq: int) -> None:
        """A chunk is in the spool and the ledger: the link may send it."""
        self.stored_seq = seq
        self.supervisor.send("spooled", (seq, *self.agent.spool.location(seq)))

    async def _report(self) -> None:
        a = self.agent
        while True:
            self.supervisor.send("status", {"report": dict(a.status()), "policy_version": a.policy.version,
                                            "spool": self._spool_state()})
            await asyncio.sleep(REPORT_S)

    # ---------------------------------------------------------------- from the link process

    def _acked(self, seq: int) -> None:
        self._ack_to = max(self._ack_to, seq)
        self._ack_wanted.set()

    async def _apply_acks(self) -> None:
        """Acks that arrive while one is applied fold into the next (one state write for a run of them)."""
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted.clear()
            await asyncio.to_thread(self.agent.spool.ack, self._ack_to)
            self.on_ack()

    def _adopt(self, cloud_acked: int) -> None:
        self._ack_to = max(self._ack_to, cloud_acked)
        self.agent.spool.adopt_cloud_mark(cloud_acked)
        self.on_ack()

    def _lost(self, seq: int) -> None:
        """The link could not read a record: let the spool find it damaged or missing (it quarantines
        it and keeps the lost range), so the next start reports it too."""
        try:
            self.agent.spool.read(seq)
        except (SpoolCorrupt, KeyError):
            pass

    def _link(self, snapshot: dict[str, Any]) -> None:
        was = self.state["connected"]
        self.state = snapshot
        if snapshot["connected"] and not was:
            self.on_ack()  # the welcome's mark may have freed the spool

    def _act_chunk(self, payload: list[Any]) -> None:
        """An action chunk (or a refusal) for the control loop: it takes it at its next tick."""
        rid, start, version, horizon, action_dim, actions, code, cameras = payload
        source = self.agent.control.chunks
        if source is None:
            return
        if code:
            source.refused(rid, code)
        else:
            source.chunk_arrived(rid, start, version, decode_actions(actions, horizon, action_dim), cameras)

    def _policy(self, payload: tuple[int, str, str]) -> None:
        version, sha256, path = payload
        task: asyncio.Task[None] = asyncio.create_task(self.on_policy(version, sha256, Path(path)))
        self._policies.add(task)
        task.add_done_callback(self._policies.discard)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for inbox in self.inboxes:
            clear(inbox)  # from a link process of an earlier run
        self._tasks = (asyncio.create_task(self.supervisor.run()), asyncio.create_task(self._apply_acks()),
                       asyncio.create_task(self._report()))

    async def drain(self, timeout: float) -> None:
        """Let the link send what is spooled (up to ``timeout``), then end it."""
        t0 = time.monotonic()
        self.supervisor.send("status", {"report": dict(self.agent.status()), "policy_version": self.agent.policy.version,
                                        "spool": self._spool_state()})
        acked = await self.supervisor.drain(timeout, f"agent stopping; {self.agent.spool.pending()} chunks left in its spool")
        if acked is not None and acked >= self.stored_seq:
            log.info("event=drained seconds=%.2f", time.monotonic() - t0)
        else:
            log.warning("event=drain_timeout pending=%d (kept in the spool for the next start)",
                        max(0, self.stored_seq - (acked or self.agent.spool.acked_seq)))
        if acked is not None:
            await asyncio.to_thread(self.agent.spool.ack, acked)
        await cancel_and_reap((*self._tasks, *self._policies))
        for inbox in self.inboxes:
            await asyncio.to_thread(clear, inbox)  # a policy that came too late to map: not left in memory
