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

A fourth fleet is the same at +40 ms but with camera robots served a ``cnn_flow`` (the same flow
head over the default per-view conv stack, reading a 32x32x3 frame and the state): each request
carries the frame. The robots are ``harness.pixel_mass`` (the point mass with a top-down frame
drawn in numpy: a MuJoCo frame costs milliseconds of software GL, and eight robots at 50 Hz would
measure the renderer on this machine). Its round trip, server batch and latency, request bytes
and upstream bytes are compared with the state fleet at +40 ms.

Figures over a steady window (after every robot has its first chunks): ticks due (50 Hz x window
x robots), ticks run, missed ticks (target 0), ticks waiting for an episode's first chunk (a
round trip at each episode start, reported apart), lost chunks, the robots' round trip
(p50/p99, as the control process sees it), the server's batch sizes and latency, the bytes of
one request and the bytes the relay carried towards the learner.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.pixel_mass import CAMERA, PixelAgent
from harness.policies import cnn_flow_policy_file, flow_policy_file
from harness.procs import Agent
from harness.procs import Learner as _Learner
from shared.policy.cnn import DEFAULT_CHANNELS, DEFAULT_LATENT
from shared.protocol import ActRequest
from shared.protocol import act_cameras as ac
from shared.protocol.frames import MsgType, encode_frame

from . import common as C

ROBOTS = 8
RATE_HZ = 50.0
HORIZON = 10
DIMS = 2
FIELDS = ("position", "velocity", "goal")  # the point mass's state, DIMS floats each
FRAME = (32, 32, 3)  # the camera fleet's frame
EPISODE_STEPS = 1500  # 30 s episodes: starts are rare, and reported apart
POLICY = {"where": "cloud", "horizon": HORIZON, "overlap": 2, "blend_steps": 2, "on_late": "hold",
          "request_timeout_ms": 500, "max_inflight": 3, "camera_codec": "raw"}
STATE_40 = "+40 ms round trip"  # the state fleet the camera fleet is compared with
CAMERAS_40 = f"+40 ms round trip, camera robots ({'x'.join(map(str, FRAME))}) served a cnn_flow"
RUNS = (  # (label, ms added each way, policy.max_inflight, camera robots)
    ("no added delay", 0.0, 3, False),
    ("+40 ms round trip, one request out at a time", 20.0, 1, False),
    (STATE_40, 20.0, 3, False),
    (CAMERAS_40, 20.0, 3, True),
)


class Learner(_Learner):
    DEFAULTS = {"learning_starts": 10**9}
    CLEAN_EXIT = False


def _chunks(agent: Agent) -> dict[str, Any]:
    s = agent.status()
    return {**s.get("chunks", {}), "steps": s.get("control", {}).get("steps", 0), "time": s.get("time", 0.0)}


def request_bytes(cameras: dict[str, tuple[int, int, int]]) -> int:
    """Bytes of one request as a point mass encodes it (every state field, and ``cameras`` raw): the
    protocol frame, without the websocket's own 2-14. Ids and ticks of 7 digits, as in a long run."""
    state = {f: bytes(4 * DIMS) for f in FIELDS}
    frames = {c: ac.CameraFrame(hwc, "raw", bytes(hwc[0] * hwc[1] * hwc[2])) for c, hwc in cameras.items()}
    req = ActRequest(10**6, 10**6, state, 0, frames)
    return len(encode_frame(MsgType.ACT_REQUEST, req.meta(), req.body))


def fleet_run(root: Path, weights: Path, delay_ms: float, seconds: float, robots: int,
              max_inflight: int, cameras: bool = False) -> dict[str, Any]:
    """One fleet through a relay adding ``delay_ms`` each way; the figures over a steady window.
    ``cameras``: pixel point masses (a FRAME-sized ``camera`` field in every request the policy reads)."""
    root.mkdir(parents=True)
    learner = Learner(root, inference={"enabled": True, "weights": str(weights), "batch_window_ms": 2,
                                       "latency_budget_ms": 150}).start()
    relay_port = C.free_port()
    relay = C.spawn([sys.executable, "-m", "bench._relay", "127.0.0.1", str(relay_port), "127.0.0.1",
                     str(learner.port), str(delay_ms), str(root / "relay.json")], root / "relay.log",
                    stdout=subprocess.PIPE)
    assert relay.stdout is not None and relay.stdout.readline().decode().startswith("READY")
    url = f"ws://127.0.0.1:{relay_port}/ws"
    kind, driver = (PixelAgent, {}) if cameras else (Agent, {"driver": "point_mass"})
    options = {"dims": DIMS, "max_episode_steps": EPISODE_STEPS, **({"camera_size": FRAME[0]} if cameras else {})}
    agents = [kind(root, f"pm-{i}", [url], episodes=0, rate_hz=RATE_HZ, chunk_steps=50, **driver,
                   driver_options={**options, "seed": i}, service={"status_interval_s": 0.5},
                   link={"status_interval_s": 1.0}, policy={**POLICY, "max_inflight": max_inflight})
              for i in range(robots)]
    try:
        for a in agents:
            a.start(drain_timeout=5)
        C.wait_for(lambda: all(_chunks(a).get("chunks", 0) >= 20 for a in agents), 120, "every robot's first chunks")
        time.sleep(1.0)  # past the first requests (policy load, the first round trips)
        before = [_chunks(a) for a in agents]
        server0, t0 = learner.status()["inference"], time.time()
        time.sleep(seconds)
        after = [_chunks(a) for a in agents]
        server, t1 = learner.status()["inference"], time.time()
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
    requests = server["requests"] - server0["requests"]
    frames = {c: n - server0["camera_frames"].get(c, 0) for c, n in server["camera_frames"].items()}
    up = json.loads((root / "relay.json").read_text())  # (unix time, bytes) forwarded towards the learner
    return {"delay_ms_each_way": delay_ms, "max_inflight": max_inflight, "cameras": cameras,
            "robots": per_robot, "total": total,
            "rtt_p50_ms": sorted(r["rtt_p50_ms"] for r in per_robot)[len(per_robot) // 2],
            "rtt_p99_ms": max(r["rtt_p99_ms"] for r in per_robot),
            "server": server, "server_requests_in_window": requests,
            "server_batches_in_window": server["batches"] - server0["batches"],
            "frames_per_request": {c: n / requests for c, n in frames.items()} if requests else {},
            "request_bytes": request_bytes({CAMERA: FRAME} if frames.get(CAMERA) else {}),
            "upstream_kb_per_s": sum(n for t, n in up if t0 <= t <= t1) / (t1 - t0) / 1e3}


def run(quick: bool = False) -> C.Result:
    res = C.Result("inference", quick)
    robots, seconds = (3, 4.0) if quick else (ROBOTS, 60.0)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-inference-") as d:
        root = Path(d)
        state_dim = DIMS * len(FIELDS)
        flow = flow_policy_file(root / "flow.safetensors", FIELDS, state_dim, DIMS, horizon=HORIZON,
                                hidden=(256, 256), steps=10, version=1)
        cnn_flow = cnn_flow_policy_file(root / "cnn_flow.safetensors", FIELDS, state_dim, DIMS, [(CAMERA, FRAME)],
                                        horizon=HORIZON, hidden=(256, 256), steps=10, channels=DEFAULT_CHANNELS,
                                        latent=DEFAULT_LATENT, version=1)
        for i, (label, delay, inflight, cameras) in enumerate(RUNS):
            runs[label] = fleet_run(root / f"run-{i}", cnn_flow if cameras else flow, delay, seconds, robots,
                                    inflight, cameras)
    case = f"{robots} robots x 50 Hz, horizon {HORIZON}"
    for label, r in runs.items():
        t = r["total"]
        res.add(f"{case}, {label}", "missed ticks", float(t["late_ticks"]), "ticks", float(t["ticks_due"]),
                t["late_ticks"] / t["ticks_due"] if t["ticks_due"] else float("nan"), "0 missed",
                t["late_ticks"] == 0)
    for label, r in runs.items():
        t = r["total"]
        base = runs[STATE_40] if r["cameras"] else None  # a camera fleet against the state fleet, same delay

        def add(metric: str, unit: str, get: Any, r: dict[str, Any] = r, base: dict[str, Any] | None = base,
                label: str = label) -> None:
            value, b = get(r), None if base is None else get(base)
            res.add(f"{case}, {label}", metric, value, unit, b, None if base is None else C.ratio(value, b))

        res.add(f"{case}, {label}", "ticks run / ticks due", float(t["ticks_run"]), "ticks", float(t["ticks_due"]),
                t["ticks_run"] / t["ticks_due"] if t["ticks_due"] else float("nan"))
        add("round trip p50", "ms", lambda x: x["rtt_p50_ms"])
        add("round trip p99 (worst robot)", "ms", lambda x: x["rtt_p99_ms"])
        add("requests", "requests", lambda x: float(x["total"]["requests"]))
        res.add(f"{case}, {label}", "lost chunks", float(t["lost"]), "chunks")
        res.add(f"{case}, {label}", "stale chunks (overtaken, late)", float(t["stale"]), "chunks")
        res.add(f"{case}, {label}", "ticks waiting for an episode's first chunk", float(t["start_ticks"]), "ticks")
        add("server mean batch", "requests", lambda x: x["server"]["mean_batch"])
        add("server latency p50", "ms", lambda x: x["server"]["latency_p50_ms"])
        add("server latency p99", "ms", lambda x: x["server"]["latency_p99_ms"])
        add("request bytes (encoded)", "B", lambda x: float(x["request_bytes"]))
        if r["cameras"]:
            res.add(f"{case}, {label}", "camera frames per request (server)",
                    r["frames_per_request"].get(CAMERA), "frames")
        add("upstream through the relay (requests, episodes, status)", "kB/s", lambda x: x["upstream_kb_per_s"])
    res.extra = {"runs": runs, "policy": POLICY,
                 "flow": {"horizon": HORIZON, "hidden": [256, 256], "steps": 10},
                 "cnn_flow": {"horizon": HORIZON, "hidden": [256, 256], "steps": 10, "images": [[CAMERA, *FRAME]],
                              "channels": list(DEFAULT_CHANNELS), "latent": DEFAULT_LATENT}}
    res.notes.append("round trip: request posted by the control thread to its chunk arriving in the control process "
                     "(socketpair to the link process, websocket, relay, learner batch + flow policy, and back)")
    res.notes.append("missed ticks: ticks mid-episode with no action from a chunk (the robot held); ticks at an "
                     "episode's start before its first chunk are counted apart (one round trip per episode)")
    res.notes.append("the added delay is bench._relay holding every byte 20 ms each way (this kernel has no netem)")
    res.notes.append(f"camera fleet: harness.pixel_mass (the point mass plus a {'x'.join(map(str, FRAME))} top-down "
                     "frame drawn in numpy), served a cnn_flow (the flow head above over the default conv stack, "
                     f"{len(DEFAULT_CHANNELS)}x{DEFAULT_CHANNELS[0]} channels, latent {DEFAULT_LATENT}), frames raw; "
                     f"its baseline and ratio: the state fleet at {STATE_40}, same run")
    res.notes.append("request bytes: one request frame as the robot encodes it (all state fields, and the frames "
                     "the served policy reads: camera frames per request, counted by the server, should be 1.0); "
                     "upstream: every byte the relay carried towards the learner in the window, episode uploads "
                     "(with their frames) included")
    return res
