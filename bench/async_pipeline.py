"""async: per-episode generation and training time, asynchronous pipeline vs the same run synchronous.

The same real learner (SAC) and real edge agent (simulated Fetch arm, 50 Hz)
run twice: as shipped (robots never wait; the trainer trains while data
arrives), and synchronous through the product's own switches (agent
``[control] sync = true``: after each episode the robot waits for a policy
newer than the one that acted; learner ``[learner] publish_when_idle = true``:
the trainer publishes as soon as it has caught up with the data).
Agent and learner are pinned to different cores (separate machines).

generation time per episode = wall time / episodes recorded
training time per episode   = wall time / (updates / (steps per episode x utd_ratio)),
i.e. the wall time it takes the learner to make the updates one episode calls for.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from . import common as C

PIN = (os.cpu_count() or 1) >= 2
UTD = 1  # the product default, as are the network and batch size below
EP_STEPS = 50


def one_mode(root: Path, sync: bool, window: float, warm: float, starts: int) -> dict:
    name = "sync" if sync else "async"
    port = C.free_port()
    learner = C.Learner(root / name, port=port, learner={
        "learning_starts": starts, "batch_size": 256, "hidden": [256, 256], "utd_ratio": UTD,
        # synchronous: publish only once training has caught up with the data, as a synchronous design does
        "publish_every": 10**9 if sync else 250, "publish_when_idle": sync, "checkpoint_every": 10**7, "threads": 1,
    })
    control = {"rate_hz": 50, "max_episodes": 0, "sync": sync, "sync_timeout_s": 30}
    cfg = C.agent_config(root / name, f"robot-{name}", f"ws://127.0.0.1:{port}/ws", control=control)
    # both start at once: the agent records and redials until the learner listens
    agent = C.start_agent(cfg, drain_timeout=5, prefix=["taskset", "-c", "0"] if PIN else None)
    try:
        learner.start(prefix=["taskset", "-c", "1"] if PIN else None)
        C.wait_for(lambda: learner.status()["updates"] > 0, 120, "training to start", 0.1)
        time.sleep(warm)
        s0, t0 = learner.status(), time.monotonic()
        time.sleep(window)
        s1, t1 = learner.status(), time.monotonic()
    finally:
        C.stop(agent)
        learner.stop()
    wall = t1 - t0
    eps = s1["episodes"] - s0["episodes"]
    upd = s1["updates"] - s0["updates"]
    return {"wall_s": wall, "episodes": eps, "updates": upd,
            "gen_s_per_episode": wall / eps if eps else float("inf"),
            "train_s_per_episode": wall / (upd / (EP_STEPS * UTD)) if upd else float("inf"),
            "updates_per_s": upd / wall, "policy_versions": s1["policy_version"] - s0["policy_version"]}


def run(quick: bool = False) -> C.Result:
    res = C.Result("async", quick)
    window, warm, starts = (2.0, 0.3, 60) if quick else (40.0, 3.0, 300)
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-async-") as d:
        a = one_mode(Path(d), False, window, warm, starts)
        s = one_mode(Path(d), True, window, warm, starts)
    g = C.ratio(s["gen_s_per_episode"], a["gen_s_per_episode"])
    t = C.ratio(s["train_s_per_episode"], a["train_s_per_episode"])
    res.add("generation time per episode", "async (speed-up = sync/async)", a["gen_s_per_episode"], "s",
            s["gen_s_per_episode"], g, ">= 1.5x", g >= 1.5)
    res.add("training time per episode", "async (speed-up = sync/async)", a["train_s_per_episode"], "s",
            s["train_s_per_episode"], t, ">= 4.6x", t >= 4.6)
    res.add("learner updates/s", "async", a["updates_per_s"], "1/s", s["updates_per_s"], C.ratio(a["updates_per_s"], s["updates_per_s"]))
    res.add("policy pushes in the window", "async", float(a["policy_versions"]), "", float(s["policy_versions"]))
    res.extra = {"async": a, "sync": s, "utd_ratio": UTD, "episode_steps": EP_STEPS, "rate_hz": 50, "pinned": PIN}
    res.notes.append(f"one robot at 50 Hz ({EP_STEPS}-step episodes), SAC 256x256, batch 256, utd_ratio {UTD}, "
                     f"one torch thread; {window:.0f} s measured per mode after training started")
    return res
