"""``edge-agent check``: is this robot computer ready to run the agent?

Each probe gives one row (ok, FAIL, or "-" for not applicable) with a
one-line reason, so a person at the robot sees every problem at once, not
the first traceback. Adding a probe is adding a function that returns rows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from hal_drivers import registry
from shared import config as cfgmod
from shared.config import AgentConfig
from shared.errors import FleetError
from shared.protocol import EdgeConnection, Limits, Reject

from .handshake import normalize_pin, open_link, peer_sha256, tls_context

from .metrics import is_online, read_status

AUTH_CODES = ("auth_failed", "auth_required", "revoked", "credential_expired", "unknown_robot")


@dataclass
class Row:
    name: str
    ok: bool | None  # None: not applicable / not configured
    detail: str

    @property
    def result(self) -> str:
        return {True: "ok", False: "FAIL", None: "-"}[self.ok]


def _one_line(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(f"{type(e).__name__}: {msg}".split()) if not isinstance(e, FleetError) else " ".join(str(e).split())


def check_dir(name: str, path: Path) -> Row:
    """Writable and fsync-able, as the user running the check."""
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    who = f"uid {os.geteuid()}"
    if not probe_dir.is_dir():
        return Row(name, False, f"{path}: {probe_dir} is a file, not a directory")
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        return Row(name, False, f"{path}: {probe_dir} is not writable by {who}")
    if probe_dir != path:
        return Row(name, True, f"{path}: does not exist yet; {probe_dir} is writable ({who}), the agent creates it")
    tmp = path / f".check-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"fleetrl check")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        return Row(name, False, f"{path}: cannot write: {e.strerror}")
    finally:
        tmp.unlink(missing_ok=True)
    free = shutil.disk_usage(path).free
    return Row(name, True, f"{path}: writable ({who}), {free / (1 << 30):.1f} GiB free")


def check_robot(cfg: AgentConfig) -> tuple[Row, Any]:
    """Create the driver, ask it to describe itself, release it."""
    name = f"robot {cfg.robot.name}"
    try:
        desc = registry.describe(cfg.robot.driver, cfg.robot.options, name=cfg.robot.name)
    except Exception as e:  # any driver failure is a finding, not a crash of the check
        return Row(name, False, f"driver {cfg.robot.driver}: {_one_line(e)}"), None
    detail = (f"{desc.driver} identity={desc.identity} kind={desc.kind.value} action_dim={len(desc.action_low)} "
              f"observations={','.join(desc.observation)}")
    return Row(name, True, detail), desc


async def _probe(cfg: AgentConfig, url: str, desc: Any, credential: str | None, pin: str | None,
                 hello: bool, timeout: float) -> tuple[Row, str | None]:
    """(link row, handshake outcome: 'welcome', a reject code, or None when no hello was sent)."""
    t0 = time.monotonic()
    ctx = tls_context(url, cfg.link.ca_file, bool(pin))
    async with connect(url, ssl=ctx, open_timeout=timeout, compression=None, close_timeout=1) as ws:
        got = peer_sha256(ws)
        if pin and got is not None and got != normalize_pin(pin):
            return Row("link", False, f"{url}: certificate sha256 {got} is not the pinned one"), None
        opened = (time.monotonic() - t0) * 1e3
        if not hello:
            why = "no robot description (driver failed)" if desc is None else "the running agent holds the link"
            return Row("link", True, f"{url}: websocket open in {opened:.0f} ms; handshake skipped: {why}"), None
        conn = EdgeConnection(cfg.robot_id, desc.episode_spec().to_dict(), [desc.to_dict()], Limits(), credential)
        msg = await open_link(ws, conn, timeout)
        if isinstance(msg, Reject):
            return Row("link", False, f"{url}: refused: {msg.code}: {msg.message}"), msg.code
        ms = (time.monotonic() - t0) * 1e3
        return Row("link", True, f"{url}: welcome in {ms:.0f} ms (run {msg.run_id}, acked seq {msg.acked_seq}, "
                                 f"policy v{msg.policy_version})"), "welcome"


def check_link(cfg: AgentConfig, desc: Any, credential: str | None, pin: str | None, agent_running: bool,
               timeout: float) -> tuple[list[Row], str | None]:
    rows, outcome = [], None
    for url in cfg.link.urls:
        try:
            row, got = asyncio.run(asyncio.wait_for(
                _probe(cfg, url, desc, credential, pin, desc is not None and not agent_running, timeout), 3 * timeout))
        except asyncio.TimeoutError:
            row, got = Row("link", False, f"{url}: timed out after {timeout:g} s"), None
        except Exception as e:  # refused, TLS, HTTP status, protocol: each is a finding for the table
            row, got = Row("link", False, f"{url}: {_one_line(e)}"), None
        rows.append(row)
        outcome = outcome or got
    return rows, outcome


def check_credential(cfg: AgentConfig) -> tuple[Row, str | None, str | None]:
    try:
        from . import enrollment
    except ImportError:  # built without the security work
        return Row("credential", None, "not configured"), None, None
    try:
        credential, pin = enrollment.load(cfg)
    except FleetError as e:
        return Row("credential", False, str(e)), None, None
    if credential is None:
        return Row("credential", None, "not configured (edge-agent enroll)"), None, pin
    return Row("credential", True, "present"), credential, pin


def check_teleop(cfg: AgentConfig, desc: Any, agent_running: bool = False) -> list[Row]:
    """Build the teleop device, start it for this robot's actions (opens the hardware), release it.

    No row without a ``[teleop]`` table: most robots run without a human at hand."""
    if cfg.teleop is None:
        return []
    return [_teleop_row(cfg, desc, agent_running)]


def _teleop_row(cfg: AgentConfig, desc: Any, agent_running: bool) -> Row:
    from .human import create_teleop

    assert cfg.teleop is not None
    name = f"teleop {cfg.teleop.name}"
    try:
        unit = create_teleop(cfg)
    except Exception as e:  # any device failure is a finding, not a crash of the check
        return Row(name, False, f"device {cfg.teleop.device}: {_one_line(e)}")
    assert unit is not None
    try:
        d = unit.describe()
        if desc is None or agent_running:
            why = "the running agent holds it" if agent_running else "no robot description"
            return Row(name, True, f"{d.driver} identity={d.identity}: options valid; not opened ({why})")
        unit.start(len(desc.action_low), cfg.teleop.takeover)
        return Row(name, True, f"{d.driver} identity={d.identity} takeover={cfg.teleop.takeover}: opened")
    except Exception as e:
        return Row(name, False, f"device {cfg.teleop.device}: {_one_line(e)}")
    finally:
        unit.close()


def run_checks(config_path: Path, timeout: float = 5.0) -> list[Row]:
    try:
        cfg = cfgmod.load(AgentConfig, config_path)
    except FleetError as e:
        return [Row("config", False, str(e))] + [Row(n, None, "skipped: no valid config")
                                                  for n in ("robot", "spool dir", "state dir", "link", "credential")]
    rows = [Row("config", True, f"{config_path}: robot_id={cfg.robot_id}, driver={cfg.robot.driver}")]
    status = read_status(cfg.state_dir)
    running = status is not None and is_online(status)
    robot_row, desc = check_robot(cfg)
    if running:
        robot_row.detail += f" (note: the agent is running, pid {status['pid']})"  # type: ignore[index]
    rows += [robot_row, *check_teleop(cfg, desc, running), check_dir("spool dir", cfg.spool.dir),
             check_dir("state dir", cfg.state_dir)]
    cred_row, credential, pin = check_credential(cfg)
    link_rows, outcome = check_link(cfg, desc, credential, pin, running, timeout)
    rows += link_rows
    if cred_row.ok and outcome is not None:
        if outcome == "welcome":
            cred_row.detail = "present, accepted by the learner"
        elif outcome in AUTH_CODES:
            cred_row.ok, cred_row.detail = False, f"present, refused by the learner ({outcome})"
    rows.append(cred_row)
    return rows


def format_table(rows: list[Row]) -> str:
    w = max(len("CHECK"), *(len(r.name) for r in rows))
    lines = [f"{'CHECK':<{w}}  RESULT  DETAIL"]
    lines += [f"{r.name:<{w}}  {r.result:<6}  {r.detail}" for r in rows]
    return "\n".join(lines)
