"""The sd_notify protocol for real: an edge-agent process whose NOTIFY_SOCKET is
a datagram socket this test reads, with a real control loop, real signals, and
a real hang (FLEETRL_HANG_AT blocks the control thread inside its tick)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from harness.notify import NotifySocket

WATCHDOG_S = 0.6  # WatchdogSec for the hang tests: pings are expected every 0.3 s
# The ping-rate test measures gaps at this end, on a busy 2-core CI machine: a longer WatchdogSec
# (pings every 1 s) leaves a second of slack for scheduling noise in both processes.
RATE_WATCHDOG_S = 2.0


@pytest.fixture
def notify():
    ns = NotifySocket()
    yield ns
    ns.close()


def _start(tmp_path: Path, ns: NotifySocket, hang_at: str | None = None, watchdog_s: float = WATCHDOG_S) -> subprocess.Popen:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(tomli_w.dumps({
        "robot_id": "notify-test",
        "link": {"url": "ws://127.0.0.1:9/ws", "reconnect_max_s": 1.0},  # nothing listens: the robot runs offline
        "control": {"rate_hz": 50},
        "spool": {"dir": "spool"}, "state_dir": "state",
        "service": {"metrics_port": 0, "status_interval_s": 0.5},
    }))
    env = {**os.environ, "NOTIFY_SOCKET": "@" + ns.name, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
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
    p = _start(tmp_path, notify, watchdog_s=RATE_WATCHDOG_S)
    procs.append(p)
    assert notify.read_until(lambda m: "READY" in m, 60), (tmp_path / "agent.log").read_text()[-2000:]
    statuses = [m["STATUS"] for _, m in notify.msgs if "STATUS" in m]
    assert statuses[0] == "recovering the spool"  # the spool comes before anything else
    assert any(s.startswith("connecting the robot") for s in statuses)
    ready_at = notify.times("READY")[0]
    first_ping = notify.times("WATCHDOG")[0]
    assert first_ping <= ready_at  # the first tick (which pings) is what makes the agent ready
    window = 6.0  # at 50 Hz, 300 ticks: one ping each would be 300 pings; every RATE_WATCHDOG_S / 2 is ~6
    notify.read_until(lambda m: False, window)
    pings = [t for t in notify.times("WATCHDOG") if t > ready_at]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    print(f"{len(pings)} pings in {window:g} s, gaps {min(gaps):.2f}..{max(gaps):.2f} s")
    assert 3 <= len(pings) <= 12  # ~6, with room for a slow machine either way; 50 Hz would be ~300
    assert max(gaps) < RATE_WATCHDOG_S  # never late enough for systemd to fire (1 s of slack over the 1 s period)
    assert min(gaps) > 0.2  # rate-limited, not one per tick (50 Hz: 0.02 s); arrival bunching here needs 0.8 s of delay
    p.send_signal(signal.SIGTERM)
    assert notify.read_until(lambda m: "STOPPING" in m, 10)
    assert p.wait(30) == 0, (tmp_path / "agent.log").read_text()[-2000:]
    assert "event=drain_timeout" in (tmp_path / "agent.log").read_text()  # no learner: spool kept for the next start


def test_hung_control_loop_stops_the_pings_and_a_second_sigterm_exits_at_once(tmp_path, notify, procs) -> None:
    p = _start(tmp_path, notify, hang_at="control_tick:75")  # 1.5 s of ticks at 50 Hz, then stuck in the tick
    procs.append(p)
    assert notify.read_until(lambda m: "READY" in m, 60), (tmp_path / "agent.log").read_text()[-2000:]
    # The process stays alive (its status goes out every 0.5 s) while the pings, due every 0.3 s, stop:
    # six status reports in a row with no ping between them is >= 2.5 s of silence on the agent's own clock.
    assert notify.read_until(lambda m: len(notify.times("WATCHDOG")) >= 3
                             and notify.count_after("STATUS", notify.times("WATCHDOG")[-1]) >= 6, 60), notify.msgs[-5:]
    print(f"pings stopped {time.monotonic() - notify.times('WATCHDOG')[-1]:.1f} s ago")  # > 2 * WATCHDOG_S: systemd restarts it
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert notify.read_until(lambda m: "STOPPING" in m, 10)
    stopping_at = notify.times("STOPPING")[-1]
    # The drain cannot finish (the control thread never returns): the process had its chance to exit
    # while it sent two more status reports, and is still here.
    assert notify.read_until(lambda m: notify.count_after("STATUS", stopping_at) >= 2, 30), notify.msgs[-5:]
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    # Without the second-SIGTERM path it would never exit (the thread is hung); exiting at all is the proof.
    assert p.wait(30) == 128 + signal.SIGTERM
    assert "event=exit_now reason=second_sigterm" in (tmp_path / "agent.log").read_text()


def test_no_ready_while_the_first_tick_hangs(tmp_path, notify, procs) -> None:
    p = _start(tmp_path, notify, hang_at="control_tick:1")
    procs.append(p)
    assert notify.read_until(lambda m: m.get("STATUS", "").startswith("starting"), 60), \
        (tmp_path / "agent.log").read_text()[-2000:]
    starting_at = notify.times("STATUS")[-1]
    # The agent goes on reporting its status (every 0.5 s) while the first tick hangs: five reports,
    # >= 2 s on its own clock, and neither READY nor a ping among them.
    assert notify.read_until(lambda m: "READY" in m or "WATCHDOG" in m or notify.count_after("STATUS", starting_at) >= 5, 60)
    assert not notify.times("READY") and not notify.times("WATCHDOG"), notify.msgs
    p.kill()
    p.wait(10)
