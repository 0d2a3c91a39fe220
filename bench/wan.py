"""wan: upload goodput and recovery over an emulated WAN link.

Two network namespaces of our own (``flbench-r``: the robot, 10.213.0.1;
``flbench-l``: the learner, 10.213.0.2) joined by a veth pair. Each end's
egress is shaped to 20 Mbit/s by ``tc`` tbf; 1 % of packets leaving each end
are dropped by an iptables ``statistic`` rule; a small relay in the learner
namespace holds data 20 ms each way (40 ms RTT; this kernel has no netem).
The agent (real edge agent, camera robot) starts with a backlog of
camera-noisy image chunks; mid-run the link is cut for 5 s (DROP rules in the
robot namespace), then healed. Baseline: the link's configured rate.
Nothing outside loopback and these two namespaces is touched; they are
removed afterwards, and stale ones from an earlier crash are removed first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common as C

PREFIX = "flbench-"
NS_R, NS_L = PREFIX + "r", PREFIX + "l"
DEV_R, DEV_L = "flb-r", "flb-l"
IP_R, IP_L = "10.213.0.1", "10.213.0.2"
RATE_MBIT = 20
LINK_BPS = RATE_MBIT * 1e6 / 8
RELAY_PORT = 9000
INSTALL_HINT = "apt-get install -y iproute2 iptables"


def cannot_run_reason() -> str:
    if sys.platform != "linux":
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root (it creates network namespaces, a veth pair, tc and iptables rules); run as root"
    missing = [t for t in ("ip", "tc", "iptables") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}: {INSTALL_HINT}"
    return ""


def sh(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def cleanup() -> None:
    """Remove our namespaces (and with them the veth pair and every rule inside)."""
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    for line in p.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    subprocess.run(["ip", "link", "del", DEV_R], capture_output=True, timeout=30)  # if left in the root ns


def setup(loss: float) -> None:
    sh("ip", "netns", "add", NS_R)
    sh("ip", "netns", "add", NS_L)
    sh("ip", "link", "add", DEV_R, "type", "veth", "peer", "name", DEV_L)
    sh("ip", "link", "set", DEV_R, "netns", NS_R)
    sh("ip", "link", "set", DEV_L, "netns", NS_L)
    for ns, dev, ip in ((NS_R, DEV_R, IP_R), (NS_L, DEV_L, IP_L)):
        sh("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
        try:
            sh("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{RATE_MBIT}mbit", "burst", "32kb",
               "latency", "100ms", ns=ns)
        except RuntimeError as e:
            raise RuntimeError(f"tc tbf not available in this kernel: {e}") from None
        if loss > 0:
            try:
                sh("iptables", "-A", "OUTPUT", "-o", dev, "-m", "statistic", "--mode", "random",
                   "--probability", str(loss), "-j", "DROP", ns=ns)
            except RuntimeError as e:
                raise RuntimeError(f"iptables statistic match not available: {e} ({INSTALL_HINT})") from None


def cut(on: bool) -> None:
    op = "-I" if on else "-D"
    sh("iptables", op, "INPUT", "-i", DEV_R, "-j", "DROP", ns=NS_R)
    sh("iptables", op, "OUTPUT", "-o", DEV_R, "-j", "DROP", ns=NS_R)


def durable_rows(data_dir: Path) -> int:
    try:
        m = json.loads((data_dir / "buffer" / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(s["rows"] for s in m["segments"])


def run(quick: bool = False) -> C.Result:
    res = C.Result("wan", quick)
    why = cannot_run_reason()
    if why:
        res.error = f"cannot run: {why}"
        res.notes.append(res.error)
        return res
    backlog_n, t_cut, cut_s = (200, 2.0, 1.0) if quick else (700, 12.0, 5.0)
    cleanup()
    try:
        with tempfile.TemporaryDirectory(prefix="fleetrl-bench-wan-") as d:
            root = Path(d)
            setup(0.01)
            learner = C.Learner(root, host="127.0.0.1").start(prefix=["ip", "netns", "exec", NS_L])
            record = root / "relay.json"
            relay = C.spawn([sys.executable, "-m", "bench._relay", IP_L, str(RELAY_PORT), "127.0.0.1",
                             learner.url.rsplit(":", 1)[1].split("/")[0], "20", str(record)],
                            root / "relay.log", stdout=subprocess.PIPE, prefix=["ip", "netns", "exec", NS_L])
            assert relay.stdout.readline().decode().startswith("READY")
            robot = "wan-robot"
            cs = C.make_chunks("noisy", backlog_n, robot, chunk_steps=10)
            cfg = C.agent_config(root, robot, f"ws://{IP_L}:{RELAY_PORT}/ws", camera=True,
                                 link={"allow_insecure": True, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0, "ping_interval_s": 1.0,
                                       "ping_timeout_s": 3.0, "connect_timeout_s": 2.0})
            C.prefill_spool(cfg.parent / "spool", cs)
            agent = C.start_agent(cfg, drain_timeout=300, prefix=["ip", "netns", "exec", NS_R])
            log = cfg.parent / "agent.log"
            C.wait_for(lambda: C.log_events(log, "link_up") or agent.poll() is not None, 90, "agent link")
            if not C.log_events(log, "link_up"):
                raise RuntimeError(f"agent never linked: {log.read_text()[-1500:]} relay: {(root / 'relay.log').read_text()[-500:]}")
            t0 = C.log_events(log, "link_up")[0][0]
            per_row = cs.wire_bytes / cs.rows
            samples: list[tuple[float, int]] = []
            cut_at = heal_at = None
            while agent.poll() is None:
                now = time.time()
                samples.append((now, durable_rows(learner.data_dir)))
                if cut_at is None and now - t0 >= t_cut:
                    cut(True)
                    cut_at = time.time()
                elif cut_at is not None and heal_at is None and now - cut_at >= cut_s:
                    cut(False)
                    heal_at = time.time()
                time.sleep(0.05)
            if heal_at is None:
                raise RuntimeError("the backlog drained before the cut: make it larger")
            C.stop(relay)
            ups = json.loads(record.read_text())
            count = C.count_exactly_once(learner.data_dir, robot, cfg.parent / "state")
            reconnects = len(C.log_events(log, "link_up")) - 1
            link_events = [(round(t - heal_at, 3), ln.split("event=", 1)[1][:140])
                           for ev in ("link_up", "link_down") for t, ln in C.log_events(log, ev)]
            link_events.sort()
            learner.stop()
    finally:
        C.kill_all()
        cleanup()
    # goodput: durable rows between 2 s after link up and the cut, as wire bytes
    w0 = t0 + (1.0 if quick else 2.0)
    before = [(t, r) for t, r in samples if w0 <= t <= cut_at]
    (ta, ra), (tb, rb) = before[0], before[-1]
    goodput = (rb - ra) * per_row / (tb - ta) if tb > ta else float("nan")
    flow = [t for t, n in ups if t > heal_at]
    resumed = (flow[0] - heal_at) if flow else float("nan")
    rows_at_heal = max(r for t, r in samples if t <= heal_at)
    durable_after = [t for t, r in samples if t > heal_at and r > rows_at_heal]
    first_durable = (durable_after[0] - heal_at) if durable_after else float("nan")
    res.add(f"{RATE_MBIT} Mbit/s, 1% loss, 40 ms RTT", "durable goodput (wire)", goodput / 1e6, "MB/s",
            LINK_BPS / 1e6, goodput / LINK_BPS, ">= 0.9x", goodput / LINK_BPS >= 0.9)
    res.add(f"link cut {cut_s:.0f} s, then healed", "bytes flowing again after heal", resumed, "s", None, None,
            "< 2 s", resumed < 2.0)
    res.add(f"link cut {cut_s:.0f} s, then healed", "first new durable rows after heal", first_durable, "s")
    ok = count["stored"] == count["generated"] and count["duplicates"] == 0 and count["missing"] == 0
    res.add("whole run", "stored exactly once", float(count["stored"]), "rows", float(count["generated"]), None,
            "nothing lost", ok)
    res.extra = {"count": count, "goodput_Bps": goodput, "link_Bps": LINK_BPS, "cut_s": cut_s,
                 "samples": samples[::4], "wire_bytes_per_row": per_row, "reconnects": reconnects,
                 "link_events_rel_heal_s": link_events}
    res.notes.append("goodput counts chunk bodies made durable on the learner (acked), between 2 s after link up and "
                     "the cut; the link rate includes TCP/IP and websocket framing, so ~0.95x is the ceiling")
    res.notes.append("agent link settings: ping 1 s / timeout 3 s, reconnect backoff 0.1..1 s, connect timeout 2 s")
    return res
