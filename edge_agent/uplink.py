"""The websocket client: hello, resume from the cloud's durable mark, stream
chunks under a credit window, take acks, policies and commands, reconnect with backoff.

A thin asyncio layer: the link's rules live sans-I/O in :class:`shared.protocol.EdgeConnection`
and :mod:`shared.protocol.stream` (the credit window, policy reassembly); this moves the bytes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import Any, Awaitable, Callable

import websockets
from websockets.asyncio.client import connect

from shared.errors import FleetError, InvalidState
from shared.lograte import LogLimiter
from shared.protocol import (Ack, ActChunk, Command, EdgeConnection, Limits, Policy, Reject, TunnelClose, TunnelData,
                             TunnelOpen, Welcome, inference)
from shared.protocol import act_cameras
from shared.protocol.codes import TRANSIENT, RejectCode
from shared.protocol.stream import PolicyReceiver, UploadWindow
from shared.config import LinkConfig
from shared.tasks import raise_first, until_first_done

from .spool import Spool, SpoolCorrupt
from .handshake import normalize_pin, open_link, peer_sha256, tls_context
from .tunnel import TunnelEndpoint

log = logging.getLogger("fleetrl.uplink")
_LOGS = LogLimiter(1.0)  # link churn: one line per kind per second, with a count of the rest
_REFUSED = LogLimiter(30.0)  # a refused robot says so twice a minute for as long as it lasts

__all__ = ["TRANSIENT", "LinkRejected", "Uplink"]  # TRANSIENT: the refusals waited out (shared.protocol.codes)


class LinkRejected(FleetError):
    code = "rejected"


class Uplink:
    def __init__(
        self,
        cfg: LinkConfig,
        make_connection: Callable[[], EdgeConnection],
        spool: Spool,
        on_policy: Callable[[int, str, bytes | memoryview], Awaitable[None]],
        status: Callable[[], dict[str, Any]],
        policy_version: Callable[[], int],
        limits: Limits,
        pin_sha256: str | None = None,
    ):
        self.cfg, self.make_connection, self.spool = cfg, make_connection, spool
        self.on_policy, self.status, self.policy_version, self.limits = on_policy, status, policy_version, limits
        self.connected = False
        self.reconnects = 0
        self.last_error = ""
        self.refused = ""  # "code: message" while the learner refuses this robot (cleared by a welcome)
        self.holding = False  # the learner's storage is failing: it keeps nothing, we keep our data
        self._progress = False  # an ack or a policy part arrived in this session
        self.url = cfg.urls[0]
        self.download = PolicyReceiver(limits.max_weights_bytes)
        self.pin = normalize_pin(pin_sha256)
        self.limit_seq: int = spool.last_seq  # send nothing past this (set by the recorder side)
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self.on_ack: Callable[[], Any] = lambda: None
        self.on_welcome: Callable[[Welcome], Any] = lambda welcome: None  # e.g. the learner's policy version
        self.on_command: Callable[[Command], Any] = lambda cmd: None  # an operator command (edge_agent.remote_commands)
        self.on_act_chunk: Callable[[ActChunk], Any] = lambda msg: None  # an action chunk (policy.where = "cloud")
        self._live: tuple[Any, EdgeConnection | None] = (None, None)
        self.window = UploadWindow(spool.acked_seq, max(1, limits.max_inflight_chunks))  # renewed by each welcome
        self._ack_arrived = asyncio.Event()
        self.policy_refused_reason = ""  # set while weights and commands from this learner are refused

    async def close(self, reason: str) -> None:
        """Say why we are leaving (the learner logs it), then close the link."""
        ws, conn = self._live
        if ws is None or conn is None or conn.state.value != "open":
            return
        try:
            await asyncio.wait_for(ws.send(conn.reject(RejectCode.AGENT_STOPPING, reason)), 2)
            await asyncio.wait_for(ws.close(code=1001, reason="agent stopping"), 2)
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
            pass

    def wake(self) -> None:
        """New data in the spool (call on the event loop)."""
        self._wake.set()

    async def wait_drained(self) -> None:
        """Return once the cloud has acked everything spooled so far."""
        target = self.limit_seq
        while self.spool.acked_seq < target:
            self._acked.clear()
            await self._acked.wait()

    async def run(self) -> None:
        """Redial forever. The backoff starts afresh only after a session that
        moved data (an ack, a policy part) or stayed up a while without being refused: a learner
        that holds (disk full) or refuses us is retried ever more slowly."""
        delay = self.cfg.reconnect_min_s
        while True:
            self._progress = False
            started = asyncio.get_running_loop().time()
            rejected, down = False, ""
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except InvalidState as e:  # our own side closed the link (a goodbye sent): it is gone, not refused
                self.last_error = down = f"{type(e).__name__}: {e}"
            except FleetError as e:
                rejected = True
                self._rejected(e, delay)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException, ssl.SSLError) as e:
                self.last_error = down = f"{type(e).__name__}: {e}"
            lasted = asyncio.get_running_loop().time() - started
            if not rejected and (self._progress or (self.connected and lasted >= self.cfg.reconnect_max_s)):
                delay = self.cfg.reconnect_min_s
            if down:
                _LOGS.log(log, logging.INFO, ("link_down", self.url), "event=link_down error=%r retry_in_s=%.2f",
                          down, delay)
            self.connected = False
            self.reconnects += 1
            urls = self.cfg.urls
            self.url = urls[(urls.index(self.url) + 1) % len(urls)]  # the next endpoint, if several
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    def _rejected(self, e: FleetError, delay: float) -> None:
        """The learner said no: a hold or a gap is waited out; any other refusal
        (spec_mismatch, auth_failed, revoked...) is shown in the status and
        repeated in the log, because the robot keeps recording into its spool."""
        self.last_error = f"{e.code}: {e.message}"
        if e.code in TRANSIENT:
            self.refused = ""
            self.holding = e.code == RejectCode.HOLD
            _LOGS.log(log, logging.WARNING, ("link_rejected", e.code), "event=link_rejected code=%s message=%r "
                      "action=keeping_the_data_retry_in_s=%.2f", e.code, e.message, delay)
            return
        self.refused = self.last_error
        _REFUSED.log(log, logging.ERROR, ("robot_refused", e.code), "event=robot_refused code=%s message=%r "
                     "action=recording_into_the_spool_until_its_quota pending_chunks=%d spool_bytes=%d quota_bytes=%d",
                     e.code, e.message, self.spool.pending(), self.spool.bytes, self.spool.quota_bytes)

    def _trusted(self, conn: EdgeConnection) -> bool:
        """Whether to take weights and commands: the learner proved it holds this robot's entry (a
        credential), or the config opts in for a learner on this computer (link.allow_unauthenticated)."""
        if conn.key is not None or self.cfg.allow_unauthenticated:
            self.policy_refused_reason = ""
            return True
        reason = ("no credential: the learner did not prove itself; enroll this robot "
                  "(or set link.allow_unauthenticated for a learner on this computer)")
        if self.policy_refused_reason != reason:  # once, not on every reconnect
            log.warning("event=policy_refused_unauthenticated url=%s reason=%r (data still uploads if the learner allows)",
                        self.url, reason)
        self.policy_refused_reason = reason
        return False

    def _check_pin(self, ws: Any) -> None:
        got = peer_sha256(ws)
        if self.pin and got is not None and got != self.pin:
            raise LinkRejected(f"learner certificate sha256 {got} does not match the pinned {self.pin}",
                               RejectCode.PIN_MISMATCH)

    async def _session(self) -> None:
        conn = self.make_connection()
        async with connect(
            self.url, ssl=tls_context(self.url, self.cfg.ca_file, bool(self.pin)), max_size=self.limits.max_frame_bytes, compression=None,
            open_timeout=self.cfg.connect_timeout_s, ping_interval=self.cfg.ping_interval_s,
            ping_timeout=self.cfg.ping_timeout_s, close_timeout=2,
        ) as ws:
            self._check_pin(ws)  # before a byte of ours goes out
            self._live = (ws, conn)
            msg = await open_link(ws, conn, self.cfg.connect_timeout_s, self.policy_version(), self.download.partial)
            if isinstance(msg, Reject):
                raise LinkRejected(msg.message, msg.code)
            await asyncio.to_thread(self.spool.adopt_cloud_mark, msg.acked_seq)
            self.on_welcome(msg)
            self.window = UploadWindow(self.spool.acked_seq, conn.max_inflight)
            self._acked.set()  # the welcome's mark may be the ack a cut swallowed: a drain waiting on it ends
            self.on_ack()
            self.connected = True
            if self.refused:
                log.info("event=robot_accepted previously_refused=%r", self.refused)
            self.refused = ""
            _LOGS.log(log, logging.INFO, ("link_up", self.url), "event=link_up url=%s acked_seq=%d pending=%d",
                      self.url, msg.acked_seq, self.spool.pending())
            trusted = self._trusted(conn)
            tunnels = TunnelEndpoint(self.cfg.tunnel_allow if trusted else [], conn, ws.send, self.cfg.tunnel_max_streams)
            try:
                ended = await until_first_done(self._receive(ws, conn, tunnels), self._send_chunks(ws, conn),
                                               self._send_status(ws, conn), self._apply_acks())
            finally:
                await tunnels.close()
            raise_first(ended)  # the receiver first: a reject says why, not the InvalidState it causes in the senders

    async def _send_chunks(self, ws: Any, conn: EdgeConnection) -> None:
        """Send what :class:`UploadWindow` allows: a lost range is reported in place of its chunks."""
        window = self.window
        while True:
            self._wake.clear()
            while (seq := window.next(self.limit_seq, self.spool.acked_seq)) is not None:
                lost = self.spool.lost_range(seq)
                if lost is not None:
                    await ws.send(conn.lost(seq, lost[1], lost[2]))
                    window.sent(lost[1])
                    continue
                try:
                    rec = await asyncio.to_thread(self.spool.read, seq)
                except SpoolCorrupt:
                    continue  # now a lost range: reported on the next pass
                await ws.send(conn.chunk(rec.seq, rec.episode_id, rec.rows, rec.raw_size, rec.body_crc, rec.body))
                window.sent(rec.seq)
            await self._wake.wait()

    async def send_act(self, request_id: int, step: int, obs: dict[str, bytes], policy_version: int,
                       cameras: dict[str, act_cameras.CameraFrame] | None = None) -> str:
        """Send an act request on the live link: "" once sent, else why not (a refusal code for the robot)."""
        ws, conn = self._live
        if ws is None or conn is None or not self.connected or conn.state.value != "open":
            return inference.LINK_DOWN
        try:
            await ws.send(conn.act_request(request_id, step, obs, policy_version, cameras))
        except FleetError as e:  # our hello did not offer it (an untrusted learner), or a bad observation
            _LOGS.log(log, logging.WARNING, ("act_request_refused", e.code), "event=act_request_not_sent code=%s "
                      "message=%r", e.code, e.message)
            return inference.LINK_DOWN if isinstance(e, InvalidState) else inference.BAD_OBSERVATION
        except (OSError, websockets.exceptions.WebSocketException):
            return inference.LINK_DOWN
        return ""

    async def _send_status(self, ws: Any, conn: EdgeConnection) -> None:
        while True:
            await ws.send(conn.status(self.status()))
            await asyncio.sleep(self.cfg.status_interval_s)

    async def _apply_acks(self) -> None:
        """Forget acked chunks in the spool; acks that arrive while one is being
        persisted are folded into the next write (one fsync for a run of acks)."""
        while True:
            await self._ack_arrived.wait()
            self._ack_arrived.clear()
            await asyncio.to_thread(self.spool.ack, self.window.received)
            self._progress = True
            if self.holding:
                log.info("event=learner_storing_again")
                self.holding = False
            self._acked.set()
            self.on_ack()
            self._wake.set()  # credit freed

    async def _receive(self, ws: Any, conn: EdgeConnection, tunnels: TunnelEndpoint) -> None:
        async for data in ws:
            msg = conn.receive(data if isinstance(data, bytes) else data.encode())
            if isinstance(msg, (Ack, Policy)):
                self._progress = True  # data moved: after this session the backoff starts afresh
            if isinstance(msg, Ack):
                self.window.ack(msg.seq)
                self._ack_arrived.set()
            elif isinstance(msg, Policy):
                if self.policy_refused_reason:  # an unauthenticated learner: its weights are not taken
                    continue
                try:
                    whole = self.download.add(msg)
                except FleetError as e:
                    log.error("event=policy_refused version=%d code=%s message=%r", msg.version, e.code, e.message)
                    continue
                if whole is not None:
                    try:
                        await self.on_policy(*whole)
                    except Exception as e:  # noqa: BLE001 - a bad blob must not cut the link; the current policy stays
                        log.error("event=policy_refused version=%d code=load_failed message=%r", whole[0], f"{type(e).__name__}: {e}")
            elif isinstance(msg, (TunnelOpen, TunnelData, TunnelClose)):
                await tunnels.handle(msg)
            elif isinstance(msg, ActChunk):
                if not self.policy_refused_reason:  # an unproven learner's actions are not taken either
                    self.on_act_chunk(msg)
            elif isinstance(msg, Command):
                if self.policy_refused_reason:  # an unproven learner: its commands are not taken either
                    _REFUSED.log(log, logging.WARNING, ("command_refused",), "event=remote_command_refused kind=%s "
                                 "value=%r reason=unauthenticated_learner", msg.kind, msg.value)
                    continue
                self.on_command(msg)
            elif isinstance(msg, Reject):
                raise LinkRejected(msg.message, msg.code)
