"""The edge agent: wires driver, control loop, recorder, spool, uplink and policy.

Threads: the control loop (its own), encoding and disk writes (asyncio's
worker threads). Everything else is one asyncio loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from typing import Any


from hal_drivers import registry
from hal_drivers.base import Robot
from shared.chunk import build_batch, checksum, encode_chunk
from shared.config import AgentConfig
from shared.errors import ConfigError, FleetError
from shared.fsutil import atomic_write
from shared.protocol import EdgeConnection, Limits, Policy
from shared.weights import decode_weights

from . import __version__
from .control_loop import ControlLoop
from .policy_holder import PolicyHolder
from .recorder import PendingChunk, Recorder
from .spool import Spool
from .uplink import Uplink

log = logging.getLogger("fleetrl.agent")


class Agent:
    def __init__(self, cfg: AgentConfig, drain_timeout_s: float = 30.0):
        self.cfg = cfg
        self.drain_timeout_s = drain_timeout_s
        self.limits = Limits()
        robot = registry.create(cfg.robot.driver, cfg.robot.options, name=cfg.robot.name)
        if not isinstance(robot, Robot):
            raise ConfigError(f"robot.driver: {cfg.robot.driver!r} is not a robot driver")
        self.robot = robot
        self.desc = robot.describe()
        self.spec = self.desc.episode_spec()
        self.spool = Spool(cfg.spool.dir, fsync=cfg.spool.fsync == "always", segment_bytes=cfg.spool.segment_bytes)
        self.policy = PolicyHolder(
            {k: v.size for k, v in self.spec.observation.items() if not v.is_image}, self.spec.action_dim
        )
        self.ledger: dict[str, Any] = {
            "robot_id": cfg.robot_id, "transitions": 0, "chunks": 0, "episodes": 0, "successes": 0,
            "first_seq": None, "last_seq": 0,
        }
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- pieces

    def _encode_and_spool(self, pc: PendingChunk) -> int:
        batch = build_batch(self.spec, self.cfg.robot_id, pc.episode_id, pc.steps)
        body = encode_chunk(batch)
        seq = self.spool.append(pc.episode_id, batch.num_rows, batch.nbytes, checksum(body), body)
        led = self.ledger
        led["transitions"] += batch.num_rows
        led["chunks"] += 1
        led["episodes"] += int(pc.episode_done)
        led["successes"] += int(pc.episode_done and pc.success)
        led["first_seq"] = led["first_seq"] or seq
        led["last_seq"] = seq
        self._write_ledger()
        return seq

    def _write_ledger(self) -> None:
        self.ledger["policy_versions_used"] = list(self.policy.versions_used)
        atomic_write(self.cfg.state_dir / "ledger.json", json.dumps(self.ledger).encode(), fsync=False)

    async def _on_policy(self, msg: Policy) -> None:
        try:
            weights = await asyncio.to_thread(decode_weights, msg.body, msg.sha256, self.limits.max_weights_bytes)
            loaded = await asyncio.to_thread(self.policy.prepare, weights)
        except FleetError as e:
            log.error("event=policy_refused version=%d code=%s message=%r", msg.version, e.code, e.message)
            return
        if self.policy.swap(loaded):
            log.info("event=policy_swapped version=%d", loaded.version)

    def status(self) -> dict[str, Any]:
        c = self.control
        j = c.jitter()
        return {
            "policy_version": self.policy.version, "steps": c.steps, "episodes": c.episodes,
            "successes": c.successes, "spool_bytes": self.spool.bytes, "spool_pending": self.spool.pending(),
            "acked_seq": self.spool.acked_seq, "jitter_p99_ms": round(j["p99_ms"], 3),
        }

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[PendingChunk | None] = asyncio.Queue()
        recorder = Recorder(self.cfg.control.chunk_steps, lambda pc: loop.call_soon_threadsafe(chunks.put_nowait, pc))
        self.control = ControlLoop(self.robot, self.policy, recorder, self.cfg.control)
        uplink = Uplink(
            self.cfg.link,
            lambda: EdgeConnection(self.cfg.robot_id, self.spec.to_dict(), [self.desc.to_dict()], self.limits),
            self.spool, self._on_policy, self.status, lambda: self.policy.version, self.limits,
        )
        self.uplink = uplink
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def encoder() -> None:
            while (pc := await chunks.get()) is not None:
                seq = await asyncio.to_thread(self._encode_and_spool, pc)
                log.debug("event=chunk_spooled seq=%d rows=%d", seq, len(pc.steps))
                uplink.wake()

        enc_task = asyncio.create_task(encoder())
        link_task = asyncio.create_task(uplink.run())
        log.info("event=agent_start robot_id=%s driver=%s spool_pending=%d", self.cfg.robot_id, self.desc.driver, self.spool.pending())
        self.control.start()
        loop_done = asyncio.create_task(asyncio.to_thread(self.control.join))
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait([loop_done, stop_task], return_when=asyncio.FIRST_COMPLETED)
        self.control.stop()
        await loop_done
        chunks.put_nowait(None)  # after the loop's last chunk: FIFO keeps the order
        await enc_task
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(uplink.wait_drained(), self.drain_timeout_s)
            log.info("event=drained seconds=%.2f", time.monotonic() - t0)
        except asyncio.TimeoutError:
            log.warning("event=drain_timeout pending=%d (kept in the spool for the next start)", self.spool.pending())
        link_task.cancel()
        await asyncio.gather(link_task, return_exceptions=True)
        self._write_ledger()
        self.spool.close()
        self.robot.close()
        if self.control.error is not None:
            log.error("event=agent_exit reason=control_loop_error error=%r", self.control.error)
            return 1
        log.info("event=agent_exit transitions=%d episodes=%d", self.ledger["transitions"], self.ledger["episodes"])
        return 0


