"""The edge agent's control process: driver, control loop, recorder, spool, policy.

Threads: the control loop (its own), encoding and disk writes (asyncio's
worker threads). Everything else is one asyncio loop. The websocket and the
policy download run in the link process (:mod:`edge_agent.link_process`),
which this process starts, feeds and restarts: nothing the link does can take
the interpreter lock from the control loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from hal_drivers import registry
from hal_drivers.base import Robot
from shared.chunk import EncodedChunk, make_chunk
from shared import config as cfgmod
from shared.config import AgentConfig
from shared.logs import set_level
from shared.metrics import RateMeter, start_metrics_listener
from shared.errors import ConfigError, FleetError, WeightsError
from shared.protocol import Limits
from shared.devices import resolve_device
from shared.observations import image_shapes, state_sizes
from shared.tasks import cancel_and_reap, until_first_done
from shared.weights import load_weights_file

from . import chunk_source, enrollment, status_report
from .control_loop import ControlLoop, EpisodeEnd
from .human import open_teleop
from .operator import OperatorControls
from .ledger import Ledger
from .labels import label_routes, write_token
from .metrics import render_metrics, summary_line, write_status
from .service import Heartbeat, Notifier, Signals, reload_plan, watchdog_period
from .link_feed import LinkFeed
from .policy_holder import PolicyHolder
from .recorder import PendingChunk, Recorder
from .spool import Spool
from .status import AgentStatus, LinkReport

log = logging.getLogger("fleetrl.agent")

DISK_RETRY_S = 5.0  # retry a failed spool write this often even if no ack frees space
SWITCH_INTERVAL_S = 0.0005  # how long another thread of this process may hold the GIL when a tick is due


class Agent:
    """``record_episodes``: record that many demonstrations (the human drives every step), then stop."""

    def __init__(self, cfg: AgentConfig, drain_timeout_s: float = 30.0, config_path: Path | None = None,
                 record_episodes: int | None = None):
        if record_episodes is not None:
            if cfg.teleop is None:
                raise ConfigError("edge-agent record needs a [teleop] table in the agent config (device = \"gamepad\", "
                                  "\"spacemouse\", \"keyboard\", ...): the human drives every recorded step")
            if record_episodes < 1:
                raise ConfigError(f"--episodes: must be at least 1, got {record_episodes}")
            cfg = cfg.model_copy(update={"control": cfg.control.model_copy(update={"max_episodes": record_episodes})})
        self.record_episodes = record_episodes
        self.on_episode: Callable[[EpisodeEnd], None] = lambda _end: None  # on the asyncio loop (record's progress)
        self.pending_at_exit = 0  # spool chunks the learner had not acked when the agent stopped
        policy_device = resolve_device(cfg.control.policy_device, "control.policy_device")  # before anything opens
        self.cfg = cfg
        self.config_path = config_path  # re-read on SIGHUP
        self.drain_timeout_s = drain_timeout_s
        self.limits = Limits()
        self.notifier = Notifier()
        self.state = "starting"
        self.last_status: AgentStatus | None = None
        self.metrics_url = ""
        self._rate = RateMeter()
        self._last_ack: float | None = None
        self._status_write_failed = False
        self._status_lock = asyncio.Lock()  # one writer of status.json at a time: they share its temp file
        sc = cfg.spool
        self.notifier.status("recovering the spool")
        # The spool first: after a crash, what was recorded is recovered before anything runs.
        self.spool = Spool(
            sc.dir, fsync=sc.fsync, fsync_interval_ms=sc.fsync_interval_ms,
            segment_bytes=sc.segment_bytes, quota_bytes=None if sc.quota_mb is None else int(sc.quota_mb * (1 << 20)),
        )
        self.ledger = Ledger(cfg.state_dir, cfg.robot_id)
        self.ledger.reconcile(self.spool)
        self.notifier.status(f"connecting the robot (driver {cfg.robot.driver})")
        robot = registry.create(cfg.robot.driver, cfg.robot.options, name=cfg.robot.name)
        if not isinstance(robot, Robot):
            raise ConfigError(f"robot.driver: {cfg.robot.driver!r} is not a robot driver")
        self.robot = robot
        self.desc = robot.describe()
        self.spec = self.desc.episode_spec()
        if cfg.teleop is not None:
            self.notifier.status(f"opening the teleop device ({cfg.teleop.device})")
        try:
            self.teleop = open_teleop(cfg, self.spec.action_dim)
        except BaseException:
            robot.close()
            raise
        self.policy = PolicyHolder(
            state_sizes(self.spec), self.spec.action_dim,
            max_params=cfg.link.max_policy_params, max_version_jump=cfg.link.max_policy_version_jump,
            image_fields=image_shapes(self.spec),
            device=policy_device,
        )
        self.may_start = threading.Event()
        self.may_start.set()
        self.operator = OperatorControls()
        self.disk_error = ""

    # ---------------------------------------------------------------- pieces

    def _encode(self, pc: PendingChunk) -> EncodedChunk:
        return make_chunk(self.spec, self.cfg.robot_id, pc.episode_id, pc.steps)

    def _spool(self, pc: PendingChunk, c: EncodedChunk) -> int:
        seq = self.spool.append(c.episode_id, c.rows, c.raw_size, c.crc32, c.body)
        self.ledger.record(seq, c.rows, pc.episode_done, pc.success)
        return seq

    async def _store(self, pc: PendingChunk, space_freed: asyncio.Event) -> int:
        """Spool one chunk; on a full or failing disk hold it in memory, stop new
        episodes, and retry when acks free space (or every few seconds)."""
        encoded = await asyncio.to_thread(self._encode, pc)
        while True:
            try:
                seq = await asyncio.to_thread(self._spool, pc, encoded)
            except OSError as e:
                if not self.disk_error:
                    log.error("event=spool_write_failed error=%r action=holding_chunk_and_pausing_new_episodes", e)
                self.disk_error = e.strerror or str(e)
                self.may_start.clear()
                space_freed.clear()
                try:
                    await asyncio.wait_for(space_freed.wait(), DISK_RETRY_S)
                except asyncio.TimeoutError:
                    pass
                continue
            if self.disk_error:
                log.info("event=spool_write_recovered")
                self.disk_error = ""
            self._apply_quota()
            return seq

    def _apply_quota(self) -> None:
        if self.spool.full and self.may_start.is_set():
            log.warning("event=spool_full bytes=%d quota=%d action=no_new_episodes_until_acked", self.spool.bytes, self.spool.quota_bytes)
            self.may_start.clear()
        elif not self.spool.full and not self.disk_error and not self.may_start.is_set():
            log.info("event=spool_resumed bytes=%d", self.spool.bytes)
            self.may_start.set()

    def _load_policy(self, version: int, path: Path):
        """Map the file the link process wrote, check it and build the network (a worker thread)."""
        try:
            # No second sha256: the link process hashed the parts as they arrived and wrote the file
            # into a folder only this user can write (edge_agent.policy_inbox); the format is checked.
            weights = load_weights_file(path, None, self.limits.max_weights_bytes)
            if weights.version != version:
                raise WeightsError(f"weights say version {weights.version}, the link said {version}")
            return self.policy.prepare(weights)
        finally:
            path.unlink(missing_ok=True)  # mapped (or refused): the file is not needed again

    async def _on_policy(self, version: int, sha256: str, path: Path) -> None:
        """A whole policy the link process received: swap it in between two ticks."""
        try:
            loaded = await asyncio.to_thread(self._load_policy, version, path)
        except FleetError as e:
            log.error("event=policy_refused version=%d code=%s message=%r", version, e.code, e.message)
            return
        except OSError as e:
            log.error("event=policy_refused version=%d code=load_failed message=%r", version, str(e))
            return
        if self.policy.swap(loaded):
            log.info("event=policy_swapped version=%d", loaded.version)

    def _start_ros2(self):
        from .ros2_bridge import Ros2Bridge

        r2 = self.cfg.ros2
        assert r2 is not None
        bridge = Ros2Bridge(self.cfg.robot_id, self._on_operator_command, namespace=r2.namespace,
                            domain_id=r2.domain_id, backend=r2.backend, localhost_only=r2.localhost_only)
        bridge.start()
        return bridge

    def _on_operator_command(self, cmd) -> None:
        """ROS 2 commands (on the bridge's thread) become operator controls the loop reads."""
        self.operator.apply(cmd)
        log.info("event=operator_command kind=%s value=%r", cmd.kind, cmd.value)

    def status(self) -> LinkReport:
        return status_report.link_report(self)

    def _paused_reason(self) -> str:
        return status_report.paused_reason(self)

    # ---------------------------------------------------------------- service (systemd, status file, metrics)

    def service_status(self) -> AgentStatus:
        """The one snapshot behind status.json, /metrics and systemd's STATUS= line."""
        return status_report.snapshot(self)

    async def _publish_status(self) -> None:
        self._rate.update(self.control.steps)
        s = self.last_status = self.service_status()
        self.notifier.status(summary_line(s))
        log.debug("event=status state=%s link_up=%d policy_version=%d rate_hz=%.1f unacked=%d", s["state"],
                  s["link"]["connected"], s["policy_version"], s["control"]["rate_hz"], s["spool"]["pending_chunks"])
        try:
            async with self._status_lock:
                await asyncio.to_thread(write_status, self.cfg.state_dir, s)
            self._status_write_failed = False
        except OSError as e:  # a full disk must not stop the robot; say it once
            if not self._status_write_failed:
                log.warning("event=status_write_failed error=%r", e.strerror or str(e))
            self._status_write_failed = True

    async def _status_loop(self) -> None:
        while True:
            await self._publish_status()
            await asyncio.sleep(self.cfg.service.status_interval_s)

    def _reload(self) -> None:
        """SIGHUP: apply what is safe to change in a running agent, refuse (and log) the rest."""
        if self.config_path is None:
            log.warning("event=reload_ignored reason=no_config_file")
            return
        self.notifier.reloading()
        try:
            new = cfgmod.load(AgentConfig, self.config_path)
        except FleetError as e:
            log.error("event=reload_failed error=%r action=keeping_running_config", str(e))
        else:
            merged, applied, refused = reload_plan(self.cfg, new)
            for key in refused:
                log.warning("event=reload_refused key=%s reason=restart_required action=keeping_running_value", key)
            self.cfg = merged
            self.feed.supervisor.send("link_cfg", merged.link.model_dump(mode="json"))
            if "service.log_level" in applied:
                set_level(merged.service.log_level)
            log.info("event=reloaded applied=%s refused=%s", ",".join(applied) or "-", ",".join(refused) or "-")
        self.notifier.ready(summary_line(self.service_status()))

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        try:
            return await self._run()
        finally:  # also when starting fails (a bad credential file): the operator's terminal comes back
            if self.teleop is not None:
                self.teleop.close()  # idempotent: normally done when the loop stopped

    @property
    def link_state(self) -> dict:
        """The link process's latest figures (connected, url, errors): see edge_agent.link_feed."""
        return self.feed.state

    async def _run(self) -> int:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[PendingChunk | None] = asyncio.Queue()
        control = self.cfg.control
        recorder = Recorder(control.chunk_steps, lambda pc: loop.call_soon_threadsafe(chunks.put_nowait, pc),
                            chunk_bytes=control.chunk_bytes, chunk_seconds=control.chunk_seconds)
        bridge = self._start_ros2() if self.cfg.ros2 is not None else None
        if bridge is not None:
            from .ros2_bridge import bridged_recorder

            recorder = bridged_recorder(bridge, recorder)
        d, pc = self.desc, self.cfg.policy  # action chunks: from the learner (where = "cloud") or a chunked local policy
        chunk_src = chunk_source.build(pc, control.rate_hz, d.action_low, d.action_high, self.robot.clamp,
                                    list(state_sizes(self.spec)), lambda *req: loop.call_soon_threadsafe(
                                        self.feed.supervisor.send, "act", [*req, self.policy.version]),
                                    self.policy, control.deterministic, list(image_shapes(self.spec)))
        self.control = ControlLoop(self.robot, self.policy, recorder, self.cfg.control, self.may_start, self.operator,
                                   teleop=self.teleop, demo=self.record_episodes is not None, chunks=chunk_src)

        def episode_ended(end: EpisodeEnd) -> None:  # on the control thread: hand it to the asyncio loop
            loop.call_soon_threadsafe(self.on_episode, end)

        self.control.on_episode = episode_ended
        space_freed = asyncio.Event()
        credential, pin = enrollment.load(self.cfg)

        def on_ack() -> None:
            self._last_ack = time.monotonic()
            space_freed.set()
            self._apply_quota()

        self.feed = LinkFeed(self, credential, pin, self._on_policy, on_ack)
        stop = asyncio.Event()

        def on_stop(_sig: int) -> None:
            self.state = "draining"
            self.notifier.stopping(f"draining: ending the episode, {self.spool.pending()} chunks unacked")
            stop.set()

        signals = Signals(loop, on_stop, self._reload)
        ready = asyncio.Event()
        self.control.heartbeat = Heartbeat(self.notifier, watchdog_period(), lambda: loop.call_soon_threadsafe(ready.set))
        self.control.heartbeat_period = watchdog_period()
        metrics = None
        if self.cfg.service.metrics:
            metrics = await start_metrics_listener(
                lambda: render_metrics(lambda: self.last_status), self.cfg.service.metrics_host, self.cfg.service.metrics_port,
                routes=label_routes(self.operator, await asyncio.to_thread(write_token, self.cfg.state_dir)),
            )
            if metrics is not None:
                self.metrics_url = metrics[1]
                log.info("event=metrics_listening url=%s", self.metrics_url)

        async def say_ready() -> None:
            await ready.wait()  # the loop has run a tick (or holds on purpose): now we are a running robot
            if self.state == "starting":
                self.state = "running"
            await self._publish_status()
            self.notifier.ready(summary_line(self.last_status or self.service_status()))
            log.info("event=ready")

        async def store_chunks() -> None:
            while (pc := await chunks.get()) is not None:
                self.feed.spooled(await self._store(pc, space_freed))  # counted in the ledger: now it may be sent

        async def ros2_status() -> None:
            assert bridge is not None and self.cfg.ros2 is not None
            while True:
                bridge.publish_status({**self.status(), "link": "connected" if self.link_state["connected"] else "disconnected"})
                await asyncio.sleep(self.cfg.ros2.status_interval_s)

        store_task = asyncio.create_task(store_chunks())
        self.feed.start()
        ros2_task = asyncio.create_task(ros2_status()) if bridge is not None else None
        status_task = asyncio.create_task(self._status_loop())
        ready_task = asyncio.create_task(say_ready())
        log.info("event=agent_start robot_id=%s driver=%s spool_pending=%d", self.cfg.robot_id, self.desc.driver, self.spool.pending())
        self._apply_quota()
        # Start-up built ~200k objects (torch, MuJoCo, the driver). A full collection, set off later by
        # the objects a policy build makes, would walk them all holding the GIL for 100-300 ms, a hole
        # in the loop: keep them out of every collection from now on.
        gc.collect()
        gc.freeze()
        self.control.start()
        await until_first_done(asyncio.to_thread(self.control.join), stop.wait())  # the loop ended, or a signal
        if self.state != "draining":  # the loop ended by itself (max_episodes, error)
            self.state = "draining"
            self.notifier.stopping(f"draining: {self.spool.pending()} chunks unacked")
        self.control.stop()
        await asyncio.to_thread(self.control.join)
        if self.teleop is not None:  # nobody reads it now: give the terminal or device back before the drain
            self.teleop.close()
        chunks.put_nowait(None)  # after the loop's last chunk: FIFO keeps the order
        await store_task
        await self.feed.drain(self.drain_timeout_s)
        await cancel_and_reap((ros2_task, status_task, ready_task))
        if bridge is not None:
            bridge.close()
        self.ledger.save(self.policy.versions_used)
        self.ledger.close()
        self.state = "stopped"
        await self._publish_status()
        if metrics is not None:
            await metrics[0].cleanup()
        signals.remove()  # from here a signal ends the process the default way
        self.pending_at_exit = self.spool.pending()
        self.spool.close()
        self.robot.close()
        if self.control.error is not None:
            log.error("event=agent_exit reason=control_loop_error error=%r", self.control.error)
            return 1
        log.info("event=agent_exit transitions=%d episodes=%d", self.ledger.data["transitions"], self.ledger.data["episodes"])
        return 0
