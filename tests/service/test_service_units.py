"""The unit files (systemd-analyze verify and security), `edge-agent install`,
the SIGHUP reload plan, sd_notify over a real datagram socket, and one-line logs."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edge_agent.install import render_unit
from edge_agent.service import Heartbeat, Notifier, reload_plan, watchdog_period
from shared import config as cfgmod
from shared.config import AgentConfig
from shared.logs import OneLineFormatter

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
SA = shutil.which("systemd-analyze")
needs_sa = pytest.mark.skipif(SA is None, reason="systemd-analyze not installed")


def _with_real_exec(unit: str, tmp_path: Path) -> Path:
    """A copy whose ExecStart names an executable that exists here (the shipped path is /usr/local/bin)."""
    text = (UNITS / unit).read_text()
    exe = shutil.which(unit.split(".")[0]) or sys.executable
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", text, flags=re.M)
    out = tmp_path / unit
    out.write_text(text)
    return out


@needs_sa
@pytest.mark.parametrize("unit", ["edge-agent.service", "cloud-learner.service"])
def test_units_verify_clean(unit: str, tmp_path: Path) -> None:
    r = subprocess.run([SA, "verify", "--man=no", str(_with_real_exec(unit, tmp_path))], capture_output=True, text=True)
    # The only complaints allowed are about this container (no running systemd, no such user).
    noise = [ln for ln in r.stderr.splitlines() if ln.strip() and "Failed to connect" not in ln]
    assert r.returncode == 0 and not noise, r.stderr


@needs_sa
@pytest.mark.parametrize("unit, limit", [("cloud-learner.service", 4.0), ("edge-agent.service", 4.0)])
def test_units_exposure_is_ok(unit: str, limit: float) -> None:
    r = subprocess.run([SA, "security", "--offline=true", "--no-pager", str(UNITS / unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout + r.stderr)
    assert m, r.stdout[-2000:] + r.stderr
    print(f"systemd-analyze security --offline=true systemd/{unit}: {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) < limit and m.group(2) == "OK"


def test_agent_unit_contract() -> None:
    text = (UNITS / "edge-agent.service").read_text()
    assert text == render_unit(), "systemd/edge-agent.service must equal render_unit(): regenerate it"
    for line in ("Type=notify", "WatchdogSec=15", "Restart=on-failure", "StateDirectory=fleetrl",
                 "ConfigurationDirectory=fleetrl", "LogsDirectory=fleetrl", "SupplementaryGroups=dialout video input",
                 "ProtectSystem=strict", "CapabilityBoundingSet=", "SystemCallFilter=@system-service"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))
    drain = float(re.search(r"--drain-timeout (\d+)", text).group(1))
    assert stop > drain + 5, "the drain must end before systemd's SIGKILL"


def test_install_dry_run_prints_and_touches_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = subprocess.run([sys.executable, "-m", "edge_agent", "install", "--dry-run", "--root", str(root),
                        "--robot-id", "arm-07", "--exec", "/usr/local/bin/edge-agent"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"would write {root}/etc/systemd/system/edge-agent.service" in out
    assert f"would write {root}/etc/fleetrl/agent.toml (config skeleton for robot_id arm-07" in out
    assert f"would run: systemctl --root={root} enable edge-agent.service" in out
    assert "useradd --system" in out and "--no-create-home" in out
    assert not root.exists()


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl not installed")
def test_install_into_a_root_writes_a_valid_setup_and_enables_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text("dialout:x:20:\nvideo:x:44:\n")  # this image has no input group
    args = [sys.executable, "-m", "edge_agent", "install", "--root", str(root), "--robot-id", "arm-07",
            "--url", "wss://learner.example:8765/ws", "--exec", "/opt/fleetrl/bin/edge-agent"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    unit = (root / "etc/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/opt/fleetrl/bin/edge-agent run --config /etc/fleetrl/agent.toml" in unit
    assert "SupplementaryGroups=dialout video\n" in unit  # a missing group would fail the start
    assert (root / "etc/systemd/system/multi-user.target.wants/edge-agent.service").is_symlink()
    cfg_file = root / "etc/fleetrl/agent.toml"
    assert oct(cfg_file.stat().st_mode & 0o777) == "0o640"
    cfg = cfgmod.load(AgentConfig, cfg_file)  # the skeleton is a valid config
    assert cfg.robot_id == "arm-07" and str(cfg.spool.dir) == "/var/lib/fleetrl/spool"
    cfg_file.write_text(cfg_file.read_text() + "# edited\n")
    again = subprocess.run(args, capture_output=True, text=True)
    assert "keep" in again.stdout and cfg_file.read_text().endswith("# edited\n")  # never overwrites a config


def _cfg(**over) -> AgentConfig:
    base = {"robot_id": "r1", "spool": {"dir": "/tmp/s"}, "state_dir": "/tmp/st"}
    for k, v in over.items():
        if isinstance(v, dict):
            base[k] = {**base.get(k, {}), **v}
        else:
            base[k] = v
    return AgentConfig.model_validate(base)


def test_reload_applies_safe_keys_and_refuses_the_rest() -> None:
    old = _cfg()
    new = _cfg(robot_id="r2", link={"reconnect_max_s": 3.0}, service={"log_level": "DEBUG"},
               spool={"dir": "/elsewhere"}, robot={"driver": "ros2"})
    merged, applied, refused = reload_plan(old, new)
    assert applied == ["link.reconnect_max_s", "service.log_level"]
    assert refused == ["robot.driver", "robot_id", "spool.dir"]
    assert merged.robot_id == "r1" and merged.robot.driver == old.robot.driver and merged.spool.dir == old.spool.dir
    assert merged.link.reconnect_max_s == 3.0 and merged.service.log_level == "DEBUG"
    assert reload_plan(old, old)[1:] == ([], [])


@pytest.mark.parametrize("abstract", [True, False])
def test_notifier_sends_datagrams_including_abstract_sockets(abstract: bool, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"fleetrl-test-{uuid.uuid4().hex}"
    addr = "\0" + name if abstract else str(tmp_path / "notify")
    sock.bind(addr)
    sock.settimeout(5)
    n = Notifier({"NOTIFY_SOCKET": "@" + name if abstract else addr})
    n.ready("up")
    assert sock.recv(4096).decode().split("\n")[:2] == ["READY=1", "STATUS=up"]
    beat = Heartbeat(n, period=3600.0)
    beat()
    beat()  # rate-limited: one ping per period
    assert sock.recv(4096) == b"WATCHDOG=1" and beat.pings == 1
    sock.close()
    assert Notifier({}).send("READY=1") is False  # not under systemd: a no-op


def test_watchdog_period_honours_pid() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_period({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_period({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None  # meant for another process
    assert watchdog_period({}) is None


def test_log_lines_are_one_event_each_with_journal_priority() -> None:
    rec = logging.LogRecord("fleetrl.x", logging.ERROR, __file__, 1, "event=boom n=%d", (1,), None)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        rec.exc_info = sys.exc_info()
    line = OneLineFormatter(journal=True).format(rec)
    assert "\n" not in line and line.startswith("<3>level=ERROR logger=fleetrl.x event=boom n=1 traceback=\"")
    assert "ValueError: bad\\nthing" in line
    plain = OneLineFormatter(journal=False).format(logging.LogRecord("a", logging.INFO, "", 1, "event=ok", (), None))
    assert re.match(r"\d{4}-\d\d-\d\d \S+ level=INFO logger=a event=ok$", plain)



def test_configuration_doc_is_generated_from_the_models() -> None:
    from shared.config_docs import render, undocumented

    assert undocumented() == [], "give these keys a description in shared/config.py"
    assert (REPO / "docs/configuration.md").read_text() == render(), \
        "docs/configuration.md is stale: python -m shared.config_docs > docs/configuration.md"
