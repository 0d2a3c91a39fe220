"""The link process: the uplink websocket, reading and acking the spool, receiving policies and commands.

Started (and restarted) by the control process (:mod:`edge_agent.link_supervisor`)
with one end of a socketpair. Whatever happens here (a stall, a crash, a kill,
a 400 MB policy being parsed) happens outside the control process, so the
control loop never misses a tick for it. It ignores SIGTERM/SIGINT/SIGHUP
(systemd signals the whole unit; the control process decides when the link
drains) and dies with its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from shared.logs import setup as setup_logs
from shared.config import AgentConfig, LinkConfig
from shared.protocol import ActChunk, Command, EdgeConnection, Limits, act_cameras, commands, inference
from shared.tasks import cancel_and_reap

from .link_ipc import Channel, open_channel
from .link_spool import SpoolView
from .policy_inbox import write_policy
from .uplink import Uplink

log = logging.getLogger("fleetrl.link")

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the control process dies (a kill -9 of the agent must
    not leave a link process streaming on its own)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def offered(cfg: AgentConfig, credential: str | None) -> tuple[str, ...]:
    """The hello's features: commands only where they would be applied, i.e. the site allows them
    (``control.remote_commands``) and the learner can prove itself, as for weights (a credential, or
    ``link.allow_unauthenticated``: :meth:`Uplink._trusted`). The learner answers 409 for any other
    robot, rather than accept a command this robot would drop. Cloud inference (``policy.where =
    "cloud"``) likewise: the robot acts on the chunks, so only from a learner that proved itself."""
    trusted = bool(credential) or cfg.link.allow_unauthenticated
    takes = cfg.control.remote_commands and trusted
    cloud = cfg.policy.where == "cloud" and trusted
    return (commands.FEATURE,) * takes + (inference.FEATURE,) * cloud


class LinkProcess:
    def __init__(self, ch: Channel, hello: dict[str, Any]):
        self.ch, self.hello = ch, hello
        self.cfg = AgentConfig.model_validate(hello["cfg"])
        self.loop = asyncio.get_running_loop()
        self.report: dict[str, Any] = hello["report"]
        self.policy_version: int = hello["policy_version"]
        self.inboxes = [Path(p) for p in hello["policy_inboxes"]]
        sp = hello["spool"]
        self.view = SpoolView(Path(sp["dir"]), sp["acked_seq"], sp["last_seq"], sp["lost"], self._notify)
        self.view.owner_state(sp)
        cfg, limits = self.cfg, Limits(**hello["limits"])
        robot_id, spec, desc, credential = cfg.robot_id, hello["spec"], hello["desc"], hello["credential"]
        features = offered(cfg, credential)
        self.uplink = Uplink(
            cfg.link, lambda: EdgeConnection(robot_id, spec, [desc], limits, credential, features),
            self.view, self._on_policy, lambda: dict(self.report), lambda: self.policy_version,  # type: ignore[arg-type]
            limits, hello["pin"],
        )
        self.uplink.limit_seq = hello["limit_seq"]
        self.uplink.on_welcome = lambda welcome: self.ch.send("welcome", welcome.policy_version)
        self.uplink.on_command = self._on_command
        self.uplink.on_act_chunk = self._on_act_chunk
        self._snapshot_changed = asyncio.Event()
        self.uplink.on_ack = self._snapshot_changed.set
        self._acts: set[asyncio.Task[None]] = set()

    def _notify(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.ch.send, kind, payload)

    def _on_command(self, cmd: Command) -> None:
        """An operator command from the learner: the control process applies it (or refuses: its config)."""
        self.ch.send("command", [cmd.kind, cmd.value])

    def _on_act_chunk(self, msg: ActChunk) -> None:
        """The learner's answer to an act request: to the control process as it is (actions base64)."""
        self.ch.send("act_chunk", [msg.id, msg.start_step, msg.policy_version, msg.horizon, msg.action_dim,
                                   base64.b64encode(msg.actions).decode(), msg.code, list(msg.cameras)])

    async def _act(self, payload: list[Any]) -> None:
        """Send one act request; if it cannot go out (no live link), say so at once: the robot takes its
        safe action now instead of waiting for the request to time out. Camera frames are compressed
        here (policy.camera_codec), off the control process."""
        rid, step, obs, cams, version = payload
        codec = self.cfg.policy.camera_codec
        frames = {n: act_cameras.frame(base64.b64decode(b64), shape, codec) for n, (shape, b64) in cams.items()}
        why = await self.uplink.send_act(rid, step, {k: base64.b64decode(v) for k, v in obs.items()}, version, frames)
        if why:
            self.ch.send("act_chunk", [rid, step, 0, 0, 0, "", why, []])

    async def _on_policy(self, version: int, sha256: str, data: Any) -> None:
        """Hand a whole policy to the control process as a file: it maps it and swaps between ticks."""
        path = await asyncio.to_thread(write_policy, self.inboxes, f"policy-v{version}.safetensors", data)
        self.ch.send("policy", (version, sha256, str(path)))

    def snapshot(self) -> dict[str, Any]:
        up = self.uplink
        return {"pid": os.getpid(), "connected": up.connected, "url": up.url, "reconnects": up.reconnects,
                "last_error": up.last_error, "refused": up.refused, "learner_holding": up.holding,
                "policy_refused_reason": up.policy_refused_reason}

    async def _send_snapshots(self) -> None:
        """The link's state for status.json and systemd: on a change, and every status interval."""
        last: dict[str, Any] = {}
        while True:
            now = self.snapshot()
            if now != last:
                self.ch.send("link", now)
                last = now
            self._snapshot_changed.clear()
            try:
                await asyncio.wait_for(self._snapshot_changed.wait(), min(1.0, self.cfg.service.status_interval_s))
            except asyncio.TimeoutError:
                pass

    async def run(self) -> int:
        tasks = (asyncio.create_task(self.uplink.run()), asyncio.create_task(self._send_snapshots()))
        try:
            while (msg := await self.ch.receive()) is not None:
                kind, payload = msg
                if kind == "spooled":
                    seq, segment, offset, length = payload
                    self.view.appended(seq, segment, offset, length)
                    self.uplink.limit_seq = max(self.uplink.limit_seq, seq)
                    self.uplink.wake()
                elif kind == "status":
                    self.report, self.policy_version = payload["report"], payload["policy_version"]
                    self.view.owner_state(payload["spool"])
                elif kind == "act":
                    task = asyncio.create_task(self._act(payload))
                    self._acts.add(task)
                    task.add_done_callback(self._acts.discard)
                elif kind == "link_cfg":
                    self.uplink.cfg = LinkConfig.model_validate(payload)
                elif kind == "drain":
                    await self._drain(*payload)
                    return 0
            return 0  # the control process is gone
        finally:
            await cancel_and_reap(tasks)

    async def _drain(self, timeout: float, reason: str) -> None:
        try:
            await asyncio.wait_for(self.uplink.wait_drained(), timeout)
        except asyncio.TimeoutError:
            pass
        await self.uplink.close(reason)
        self.ch.send("drained", self.view.acked_seq)
        try:
            await self.ch.writer.drain()
        except ConnectionError:  # the control process read it and closed its end first: done either way
            pass


async def _main(fd: int) -> int:
    ch = await open_channel(socket.socket(fileno=fd))
    msg = await ch.receive()
    if msg is None or msg[0] != "hello":
        return 1
    hello = msg[1]
    setup_logs(hello["log_level"])
    if hello["cfg"].get("policy", {}).get("where") != "cloud":
        # Below the control process, which shares the robot computer's cores. Not with cloud inference:
        # then every action chunk comes through this process, which is on the control path.
        try:
            os.nice(5)
        except OSError:
            pass
    link = LinkProcess(ch, hello)
    gc.collect()  # start-up's ~40k objects out of every later full collection (~30 ms with the GIL held,
    gc.freeze()   # in the path of every action chunk when the policy runs in the cloud)
    return await link.run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fleetrl edge agent: the link process (started by `edge-agent run`)")
    p.add_argument("--fd", type=int, required=True, help="the socketpair end inherited from the control process")
    p.add_argument("--parent", type=int, required=True, help="the control process's pid")
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    return asyncio.run(_main(args.fd))


if __name__ == "__main__":
    sys.exit(main())
