"""jitter: 50 Hz control loop lateness while uploading at full speed and swapping policies.

A real edge agent (bench._agent_probe: edge_agent.daemon.Agent, which also
dumps the loop's per-tick lateness on exit) drives the simulated Fetch arm
(state observations) at 50 Hz against a real learner. Loaded run: the agent
starts with a large backlog of episode chunks in its spool (so the uplink
sends as fast as the learner acks for the whole run) and the learner publishes a
large policy several times mid-run. Stalled run: the same, and the agent's
link process (the uplink; the control loop runs in the agent's main process) is
SIGSTOPped for 5 s mid-run. Baseline in the same run: the same loop, same
learner, no backlog, no policy push. The agent and the learner are
pinned to different cores (taskset) so the learner's work does not pose as
robot-side jitter, as on real, separate machines.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

from . import common as C
from .weights import make_blob, publish

PIN = os.cpu_count() is not None and os.cpu_count() >= 2


def _link_pid(state_dir: Path) -> int | None:
    try:
        return json.loads((state_dir / "status.json").read_text())["link"]["process_pid"]
    except (OSError, ValueError, KeyError):
        return None


def _stop_link_process(state_dir: Path, agent, timeout: float = 30.0) -> int:
    """SIGSTOP the agent's current link process. The pid in status.json can be a
    predecessor's for a moment (the supervisor restarted it under load): read it again."""
    deadline = time.monotonic() + timeout
    while True:
        pid = C.wait_for(lambda: _link_pid(state_dir), 30, "the link process's pid")
        try:
            os.kill(pid, signal.SIGSTOP)
            return pid
        except ProcessLookupError:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no link process to stop (last pid {pid}; agent exit {agent.poll()})") from None
            time.sleep(0.2)


def loop_run(root: Path, learner: C.Learner, robot: str, episodes: int, backlog: C.ChunkSet | None,
             repeat: int, blobs: list[Path], res: C.Result, stall_s: float = 0.0) -> dict:
    cfg = C.agent_config(root, robot, learner.url, camera=False,
                         control={"rate_hz": 50, "max_episodes": episodes, "random_steps": 10**9,
                                  "realtime_priority": 50})  # as a robot computer would run it
    if backlog is not None:
        C.prefill_spool(cfg.parent / "spool", C.ChunkSet(backlog.spec, backlog.chunks * repeat))
    probe = cfg.parent / "probe.json"
    agent = C.start_agent(cfg, drain_timeout=5, probe=probe, prefix=["taskset", "-c", "0"] if PIN else None)
    log = cfg.parent / "agent.log"
    C.wait_for(lambda: C.log_events(log, "link_up") or agent.poll() is not None, 90, "agent link")
    rows0 = learner.status()["buffer_rows"]
    t0 = time.time()
    swaps = []
    stalled = None
    if stall_s:  # stop the link process (mid-upload) for stall_s, while swaps are under way
        time.sleep(min(1.0, episodes / 4))
        pid = _stop_link_process(cfg.parent / "state", agent)
        stalled = time.time() - t0
        time.sleep(stall_s)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # it died while stopped (the supervisor restarts it); nothing to resume
    for i, blob in enumerate(blobs):
        time.sleep(max(0.0, (i + 1) * episodes * 1.0 / (len(blobs) + 1) - (time.time() - t0)))
        swaps.append(publish(learner, blob) - t0)
    agent.wait(episodes * 2 + 120)
    t_end = time.time()
    rows1 = learner.status()["buffer_rows"]
    d = json.loads(probe.read_text())
    errs = np.asarray(d["period_errors_s"]) * 1e3
    swapped = [t for t, ln in C.log_events(log, "policy_swapped")]
    return {"p50": float(np.percentile(errs, 50)), "p99": float(np.percentile(errs, 99)), "max": float(errs.max()),
            "ticks": int(errs.size), "rows_uploaded": rows1 - rows0, "seconds": t_end - t0,
            "swaps_published_at_s": swaps, "swaps_done": len(swapped), "link_stopped_at_s": stalled}


def run(quick: bool = False) -> C.Result:
    res = C.Result("jitter", quick)
    episodes = 3 if quick else 15  # quick: long enough to stop the link process mid-run (at 0.75 s of 3)
    params = 1_000_000 if quick else 100_000_000
    n_swaps = 1 if quick else 2
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-jitter-") as d:
        root = Path(d)
        learner = C.Learner(root, bench_host=True, limits={"max_frame_bytes": 1 << 30})
        learner.start(prefix=["taskset", "-c", "1"] if PIN else None)
        try:
            idle = loop_run(root, learner, "jitter-idle", episodes, None, 0, [], res)
            backlog = C.make_chunks("state", 3000 if quick else 30_000, "jitter-load")
            blobs = []
            for v in range(1, n_swaps + 1):
                blobs.append(root / f"policy-{v}.safetensors")
                make_blob(params, v, blobs[-1])
            load = loop_run(root, learner, "jitter-load", episodes, backlog, 1 if quick else 12, blobs, res)
            blobs2 = []
            for v in range(n_swaps + 1, 2 * n_swaps + 1):  # newer versions: the learner only pushes forward
                blobs2.append(root / f"policy-{v}.safetensors")
                make_blob(params, v, blobs2[-1])
            backlog2 = C.make_chunks("state", 3000 if quick else 30_000, "jitter-stall")  # chunks name their robot
            stall = loop_run(root, learner, "jitter-stall", episodes, backlog2, 1 if quick else 12, blobs2, res,
                             stall_s=0.5 if quick else 5.0)
        finally:
            learner.stop()
    targets = {"p99": 1.0, "max": 5.0}
    for case, run_ in (("loaded (upload + swaps)", load), ("loaded, link process stopped", stall)):
        for k in ("p50", "p99", "max"):
            added = run_[k] - idle[k]
            t = targets.get(k)
            res.add(f"50 Hz loop, period error {k}", case, run_[k], "ms", idle[k], C.ratio(run_[k], idle[k]),
                    f"< {t:g} ms added" if t else "", (added < t) if t else None, note=f"added {added:+.2f} ms")
    mb = load["rows_uploaded"] * (backlog.wire_bytes / backlog.rows) / 1e6
    res.add("during the loaded run", "upload (wire)", mb / load["seconds"], "MB/s")
    res.add("during the loaded run", "upload", load["rows_uploaded"] / load["seconds"], "transitions/s")
    res.add("during the loaded run", "policy swaps done", float(load["swaps_done"]), "",
            float(n_swaps), None, "all", load["swaps_done"] >= n_swaps)
    res.add("during the stalled run", "policy swaps done", float(stall["swaps_done"]), "",
            float(n_swaps), None, "all", stall["swaps_done"] >= n_swaps)
    res.extra = {"idle": idle, "load": load, "stall": stall, "policy_params": params, "pinned": PIN}
    res.notes.append(f"policy pushed mid-run: {params / 1e6:.0f}M parameters, {n_swaps} times (policies travel in parts)")
    res.notes.append("the agent runs as shipped: control loop, recorder and spool in its main process, the uplink and "
                     "policy download in its link process; both pinned to one core (taskset), the learner to the other; "
                     f"stalled run: the link process SIGSTOPped for {0.5 if quick else 5.0:g} s mid-upload")
    res.notes.append("period error = lateness of each tick against its schedule (ControlLoop._period_errors); "
                     "the robot acts with random actions so the big policy's inference is not in the loop")
    return res
