"""The sd_notify protocol for real: an edge-agent process whose NOTIFY_SOCKET is
a datagram socket this test reads, with a real control loop, real signals, and
a real hang (FLEETRL_HANG_AT blocks the control thread inside its tick)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import tomli_w

WATCHDOG_S = 0.6  # WatchdogSec: pings are expected every 0.3 s


class NotifySocket:
    """What systemd would see: every datagram, with its arrival time."""

    def __init__(self) -> None:
        self.name = f"fleetrl-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)  # abstract: NOTIFY_SOCKET=@name
        self.msgs: list[tuple[float, dict[str, str]]] = []

    def read_until(self, pred, timeout: float) -> bool:
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


@pytest.fixture
def notify():
    ns = NotifySocket()
    yield ns
    ns.sock.close()


def _start(tmp_path: Path, ns: NotifySocket, hang_at: str | None = None) -> subprocess.Popen:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(tomli_w.dumps({
        "robot_id": "notify-test",
        "link": {"url": "ws://127.0.0.1:9/ws", "reconnect_max_s": 1.0},  # nothing listens: the robot runs offline
        "control": {"rate_hz": 50},
        "spool": {"dir": "spool"}, "state_dir": "state",
        "service": {"metrics_port": 0, "status_interval_s": 0.5},
    }))
    env = {**os.environ, "NOTIFY_SOCKET": "@" + ns.name, "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}
    env.pop("FLEETRL_HANG_AT", None)
    if hang_at:
        env["FLEETRL_HANG_AT"] = hang_at
    return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(cfg), "--drain-timeout", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "wb"), env=env)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_ready_after_the_loop_runs_watchdog_at_rate_stopping_on_sigterm(tmp_path, notify, procs) -> None:
    p = _start(tmp_path, notify)
    procs.append(p)
    assert notify.read_until(lambda m: "READY" in m, 60), (tmp_path / "agent.log").read_text()[-2000:]
    statuses = [m["STATUS"] for _, m in notify.msgs if "STATUS" in m]
    assert statuses[0] == "recovering the spool"  # the spool comes before anything else
    assert any(s.startswith("connecting the robot") for s in statuses)
    ready_at = notify.times("READY")[0]
    first_ping = notify.times("WATCHDOG")[0]
    assert first_ping <= ready_at  # the first tick (which pings) is what makes the agent ready
    notify.read_until(lambda m: False, 3.0)
    pings = [t for t in notify.times("WATCHDOG") if t > ready_at]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    print(f"{len(pings)} pings in 3 s, gaps {min(gaps):.2f}..{max(gaps):.2f} s")
    assert 5 <= len(pings) <= 15  # every WATCHDOG_S / 2 = 0.3 s: ~10
    assert max(gaps) < WATCHDOG_S  # never late enough for systemd to fire
    assert min(gaps) > 0.2  # rate-limited, not one per tick (50 Hz)
    p.send_signal(signal.SIGTERM)
    assert notify.read_until(lambda m: "STOPPING" in m, 10)
    assert p.wait(30) == 0, (tmp_path / "agent.log").read_text()[-2000:]
    assert "event=drain_timeout" in (tmp_path / "agent.log").read_text()  # no learner: spool kept for the next start


def test_hung_control_loop_stops_the_pings_and_a_second_sigterm_exits_at_once(tmp_path, notify, procs) -> None:
    p = _start(tmp_path, notify, hang_at="control_tick:75")  # 1.5 s of ticks at 50 Hz, then stuck in the tick
    procs.append(p)
    assert notify.read_until(lambda m: "READY" in m, 60), (tmp_path / "agent.log").read_text()[-2000:]
    notify.read_until(lambda m: False, 4.0)
    last_ping = notify.times("WATCHDOG")[-1]
    assert len(notify.times("WATCHDOG")) >= 3
    silent = time.monotonic() - last_ping
    assert silent > 2 * WATCHDOG_S, f"pings went on {silent:.1f} s ago"  # systemd would have restarted it
    assert any(t > last_ping for t in notify.times("STATUS")), "the process is alive: only the loop is hung"
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert notify.read_until(lambda m: "STOPPING" in m, 10)
    time.sleep(1.0)  # the drain cannot finish: the control thread never returns
    assert p.poll() is None
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 5
    assert "event=exit_now reason=second_sigterm" in (tmp_path / "agent.log").read_text()


def test_no_ready_while_the_first_tick_hangs(tmp_path, notify, procs) -> None:
    p = _start(tmp_path, notify, hang_at="control_tick:1")
    procs.append(p)
    assert notify.read_until(lambda m: m.get("STATUS", "").startswith("starting"), 60), \
        (tmp_path / "agent.log").read_text()[-2000:]
    assert not notify.read_until(lambda m: "READY" in m or "WATCHDOG" in m, 2.5)
    p.kill()
    p.wait(10)
