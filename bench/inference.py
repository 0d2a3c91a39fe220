"""inference: cloud-served action chunks to a fleet at 50 Hz, through an added link delay.

A real learner process serves a small flow policy (``FlowActor``, horizon 10, hidden 256x256, 10
Euler steps; random weights from a local file: the plumbing is measured, not the task) with
``[inference] enabled``. Eight real edge-agent processes (point mass, 50 Hz, ``policy.where =
"cloud"``, horizon 10, overlap 2, blend 2, on_late hold, up to 3 requests out at once) link
through ``bench._relay``, which holds every byte ``delay`` ms in each direction. Each robot asks
for its next chunk early enough to hide the round trip (shared.chunk_exec); a tick with no
action from a chunk is a missed (late) tick. Baselines, in the same run: the same fleet with no
added delay, and with the delay but one request out at a time (``max_inflight = 1``, as before
requests were pipelined).

Figures over a steady window (after every robot has its first chunks): ticks due (50 Hz x window
x robots), ticks run, missed ticks (target 0), ticks waiting for an episode's first chunk (a
round trip at each episode start, reported apart), lost chunks, the robots' round trip
(p50/p99, as the control process sees it) and the server's batch sizes and latency.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.policies import flow_policy_file
from harness.procs import Agent
from harness.procs import Learner as _Learner

from . import common as C

ROBOTS = 8
RATE_HZ = 50.0
HORIZON = 10
EPISODE_STEPS = 1500  # 30 s episodes: starts are rare, and reported apart
POLICY = {"where": "cloud", "horizon": HORIZON, "overlap": 2, "blend_steps": 2, "on_late": "hold",
          "request_timeout_ms": 500, "max_inflight": 3}
RUNS = (  # (label, ms added each way, policy.max_inflight)
    ("no added delay", 0.0, 3),
    ("+40 ms round trip, one request out at a time", 20.0, 1),
    ("+40 ms round trip", 20.0, 3),
)


class Learner(_Learner):
    DEFAULTS = {"learning_starts": 10**9}
    CLEAN_EXIT = False


def _chunks(agent: Agent) -> dict[str, Any]:
    s = agent.status()
    return {**s.get("chunks", {}), "steps": s.get("control", {}).get("steps", 0), "time": s.get("time", 0.0)}


def fleet_run(root: Path, weights: Path, delay_ms: float, seconds: float, robots: int,
              max_inflight: int) -> dict[str, Any]:
    """One fleet through a relay adding ``delay_ms`` each way; the figures over a steady window."""
    root.mkdir(parents=True)
    learner = Learner(root, inference={"enabled": True, "weights": str(weights), "batch_window_ms": 2,
                                       "latency_budget_ms": 150}).start()
    relay_port = C.free_port()
    relay = C.spawn([sys.executable, "-m", "bench._relay", "127.0.0.1", str(relay_port), "127.0.0.1",
                     str(learner.port), str(delay_ms), str(root / "relay.json")], root / "relay.log",
                    stdout=subprocess.PIPE)
    assert relay.stdout is not None and relay.stdout.readline().decode().startswith("READY")
    url = f"ws://127.0.0.1:{relay_port}/ws"
    agents = [Agent(root, f"pm-{i}", [url], episodes=0, rate_hz=RATE_HZ, chunk_steps=50, driver="point_mass",
                    driver_options={"dims": 2, "seed": i, "max_episode_steps": EPISODE_STEPS},
                    service={"status_interval_s": 0.5}, link={"status_interval_s": 1.0},
                    policy={**POLICY, "max_inflight": max_inflight})
              for i in range(robots)]
    try:
        for a in agents:
            a.start(drain_timeout=5)
        C.wait_for(lambda: all(_chunks(a).get("chunks", 0) >= 20 for a in agents), 120, "every robot's first chunks")
        time.sleep(1.0)  # past the first requests (policy load, the first round trips)
        before = [_chunks(a) for a in agents]
        server0 = learner.status()["inference"]
        time.sleep(seconds)
        after = [_chunks(a) for a in agents]
        server = learner.status()["inference"]
    finally:
        for a in agents:
            a.kill()
        C.stop(relay)
        learner.kill()
    per_robot = []
    for a, b0, b1 in zip(agents, before, after):
        window = b1["time"] - b0["time"]
        per_robot.append({
            "robot": a.robot_id, "window_s": round(window, 2), "ticks_due": round(window * RATE_HZ),
            "ticks_run": b1["steps"] - b0["steps"],
            **{k: b1[k] - b0[k] for k in ("late_ticks", "start_ticks", "lost", "stale", "refused", "chunks", "requests")},
            "rtt_p50_ms": b1["rtt_p50_ms"], "rtt_p99_ms": b1["rtt_p99_ms"],
        })
    total = {k: sum(r[k] for r in per_robot) for k in ("ticks_due", "ticks_run", "late_ticks", "start_ticks", "lost",
                                                        "stale", "refused", "chunks", "requests")}
    return {"delay_ms_each_way": delay_ms, "max_inflight": max_inflight, "robots": per_robot, "total": total,
            "rtt_p50_ms": sorted(r["rtt_p50_ms"] for r in per_robot)[len(per_robot) // 2],
            "rtt_p99_ms": max(r["rtt_p99_ms"] for r in per_robot),
            "server": server, "server_requests_in_window": server["requests"] - server0["requests"],
            "server_batches_in_window": server["batches"] - server0["batches"]}


def run(quick: bool = False) -> C.Result:
    res = C.Result("inference", quick)
    robots, seconds = (3, 4.0) if quick else (ROBOTS, 60.0)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-inference-") as d:
        root = Path(d)
        weights = flow_policy_file(root / "flow.safetensors", ["position", "velocity", "goal"], 6, 2,
                                   horizon=HORIZON, hidden=(256, 256), steps=10, version=1)
        for i, (label, delay, inflight) in enumerate(RUNS):
            runs[label] = fleet_run(root / f"run-{i}", weights, delay, seconds, robots, inflight)
    case = f"{robots} robots x 50 Hz, horizon {HORIZON}"
    for label, r in runs.items():
        t = r["total"]
        res.add(f"{case}, {label}", "missed ticks", float(t["late_ticks"]), "ticks", float(t["ticks_due"]),
                t["late_ticks"] / t["ticks_due"] if t["ticks_due"] else float("nan"), "0 missed",
                t["late_ticks"] == 0)
    for label, r in runs.items():
        t = r["total"]
        res.add(f"{case}, {label}", "ticks run / ticks due", float(t["ticks_run"]), "ticks", float(t["ticks_due"]),
                t["ticks_run"] / t["ticks_due"] if t["ticks_due"] else float("nan"))
        res.add(f"{case}, {label}", "round trip p50", r["rtt_p50_ms"], "ms")
        res.add(f"{case}, {label}", "round trip p99 (worst robot)", r["rtt_p99_ms"], "ms")
        res.add(f"{case}, {label}", "requests", float(t["requests"]), "requests")
        res.add(f"{case}, {label}", "lost chunks", float(t["lost"]), "chunks")
        res.add(f"{case}, {label}", "stale chunks (overtaken, late)", float(t["stale"]), "chunks")
        res.add(f"{case}, {label}", "ticks waiting for an episode's first chunk", float(t["start_ticks"]), "ticks")
        res.add(f"{case}, {label}", "server mean batch", r["server"]["mean_batch"], "requests")
        res.add(f"{case}, {label}", "server latency p99", r["server"]["latency_p99_ms"], "ms")
    res.extra = {"runs": runs, "policy": POLICY,
                 "flow": {"horizon": HORIZON, "hidden": [256, 256], "steps": 10}}
    res.notes.append("round trip: request posted by the control thread to its chunk arriving in the control process "
                     "(socketpair to the link process, websocket, relay, learner batch + flow policy, and back)")
    res.notes.append("missed ticks: ticks mid-episode with no action from a chunk (the robot held); ticks at an "
                     "episode's start before its first chunk are counted apart (one round trip per episode)")
    res.notes.append("the added delay is bench._relay holding every byte 20 ms each way (this kernel has no netem)")
    return res
