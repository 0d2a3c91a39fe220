"""async: per-episode generation and training time, asynchronous pipeline vs the same fleet synchronous.

The same real learner (SAC) and the same real edge agents (simulated Fetch
arms, 50 Hz) run twice: as shipped (robots never wait; the trainer trains
while data arrives), and synchronous in rounds through the product's own
switches: agent ``[control] sync = true`` (after each episode a robot waits
for a policy newer than the one that acted) and learner
``[learner] sync_robots = N`` (the learner publishes only once each of the N
robots has delivered an episode since the last publish and training has
caught up). A round is: every robot collects an episode, then the learner
trains on all of them, publishes, and only then do the robots go on.
The learner is pinned to one core and the agents to the other (separate
machines in a real fleet). ``FLEETRL_BENCH_ASYNC_ROBOTS`` sets the fleet size
(default 4).

generation time per episode = wall time / episodes recorded
training time per episode   = wall time / (updates / (steps per episode x utd_ratio)),
i.e. the wall time it takes the learner to make the updates one episode calls for.
The synchronous window is whole rounds (publish to publish).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common as C

PIN = (os.cpu_count() or 1) >= 2
ROBOTS = int(os.environ.get("FLEETRL_BENCH_ASYNC_ROBOTS", "4"))
EP_STEPS = 50  # FetchReach: 50-step episodes at 50 Hz, one second each
# The product's defaults: a synchronous system would train the same network the same way.
LEARNER = {"batch_size": 256, "hidden": [256, 256], "utd_ratio": 1.0, "threads": 1, "checkpoint_every": 10**7}


def one_mode(root: Path, sync: bool, robots: int, window: float, warm: float, utd: float,
             pin: bool = PIN, learner_over: dict[str, Any] | None = None) -> dict[str, Any]:
    name = f"{'sync' if sync else 'async'}-{robots}r-utd{utd:g}"
    learner = C.Learner(root / name, port=C.free_port(), learner={
        **LEARNER, **(learner_over or {}), "utd_ratio": utd,
        "learning_starts": robots * EP_STEPS,  # training starts after one round of data
        "publish_every": 10**9 if sync else 250, "sync_robots": robots if sync else 0,
    })
    control = {"rate_hz": 50, "max_episodes": 0, "chunk_steps": EP_STEPS, "sync": sync, "sync_timeout_s": 60}
    agents: list[Any] = []
    try:
        learner.start(prefix=["taskset", "-c", "1"] if pin else None)
        # the robots once the learner listens: what they record while it starts is no round of either mode
        agents = [C.start_agent(C.agent_config(root / name, f"robot-{i}", learner.url, control=control, seed=i + 1),
                                drain_timeout=5, prefix=["taskset", "-c", "0"] if pin else None) for i in range(robots)]
        C.wait_for(lambda: learner.status()["updates"] > 0, 180, "training to start", 0.1)
        time.sleep(warm)  # the first rounds are irregular (robots run free until the first policy)
        s0, t0 = _mark(learner, sync)
        time.sleep(window)
        s1, t1 = _mark(learner, sync)
    finally:
        for a in agents:  # all at once: each drains and exits on its own
            a.terminate()
        for a in agents:
            C.stop(a)
        learner.stop()
    wall = t1 - t0
    eps = s1["episodes"] - s0["episodes"]
    upd = s1["updates"] - s0["updates"]
    versions = s1["policy_version"] - s0["policy_version"]
    return {"wall_s": wall, "episodes": eps, "updates": upd, "robots": robots, "utd_ratio": utd,
            "gen_s_per_episode": wall / eps if eps else float("inf"),
            "train_s_per_episode": wall / (upd / (EP_STEPS * utd)) if upd else float("inf"),
            "updates_per_s": upd / wall, "policy_versions": versions,
            "round_s": wall / versions if sync and versions else None}


def _mark(learner: C.Learner, sync: bool) -> tuple[dict[str, Any], float]:
    """A status snapshot and its time; synchronous, at a round's end (the moment a new policy is out)."""
    if not sync:
        return learner.status(), time.monotonic()
    v = learner.status()["policy_version"]

    def newer() -> dict[str, Any] | None:
        st = learner.status()
        return st if st["policy_version"] > v else None

    s = C.wait_for(newer, 120, "the end of a synchronous round", 0.02)
    assert s is not None  # wait_for returns the first truthy value
    return s, time.monotonic()


def compare(res: C.Result, root: Path, robots: int, utd: float, window: float, warm: float, targets: bool,
            pin: bool = PIN, learner_over: dict[str, Any] | None = None) -> None:
    a = one_mode(root, False, robots, window, warm, utd, pin, learner_over)
    s = one_mode(root, True, robots, window, warm, utd, pin, learner_over)
    g = C.ratio(s["gen_s_per_episode"], a["gen_s_per_episode"])
    t = C.ratio(s["train_s_per_episode"], a["train_s_per_episode"])
    case = f"{robots} robot{'s' if robots > 1 else ''}, utd_ratio {utd:g}"
    res.add(case, "generation time per episode, async (speed-up = sync/async)", a["gen_s_per_episode"], "s",
            s["gen_s_per_episode"], g, ">= 1.5x" if targets else "", g >= 1.5 if targets else None)
    res.add(case, "training time per episode, async (speed-up = sync/async)", a["train_s_per_episode"], "s",
            s["train_s_per_episode"], t, ">= 4.6x" if targets else "", t >= 4.6 if targets else None)
    res.add(case, "learner updates/s, async (sync as baseline)", a["updates_per_s"], "1/s", s["updates_per_s"],
            C.ratio(a["updates_per_s"], s["updates_per_s"]))
    res.add(case, "synchronous round (all robots' episodes, training, publish)", s["round_s"], "s")
    # The learner's capacity over what the fleet's data asks of it (g: one episode, 1 s at 50 Hz); the note in run()
    # gives the speed-ups as functions of it.
    u = a["updates_per_s"] / (robots * EP_STEPS * utd / (EP_STEPS / 50))
    res.extra[case] = {"async": a, "sync": s, "learner_capacity_over_demand_u": u}


def run(quick: bool = False) -> C.Result:
    res = C.Result("async", quick)
    robots = min(ROBOTS, 2) if quick else ROBOTS
    window, warm = (0.5, 0.0) if quick else (40.0, 8.0)
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-async-") as d:
        # quick (CI smoke, figures mean nothing): unpinned and a small net, so that it starts and rounds fast
        compare(res, Path(d), robots, 1.0, window, warm, targets=True, pin=PIN and not quick,
                learner_over={"hidden": [64, 64], "batch_size": 64} if quick else None)
        if not quick:
            # the learner sized to the fleet's data (as many updates/s as utd_ratio asks): the synchronous
            # learner idles least while robots collect, and the async one is not behind the data
            compare(res, Path(d), robots, 0.25, window, warm, targets=False)
            compare(res, Path(d), 1, 1.0, window, warm, targets=False)  # the earlier one-robot rows
    res.extra.update({"episode_steps": EP_STEPS, "rate_hz": 50, "pinned": PIN and not quick, "learner": LEARNER})
    net = "64x64, batch 64" if quick else "256x256, batch 256"
    where = "agents on core 0, learner on core 1" if PIN and not quick else "unpinned"
    res.notes.append(
        f"{robots} robots at 50 Hz ({EP_STEPS}-step episodes), {where}; SAC {net}, one torch thread, "
        f"learning_starts one round of data; the same robots and learner settings in both modes, only sync differs "
        f"(agents sync = true, learner sync_robots = robots, publish_every off); {window:g} s measured per mode "
        f"after {warm:g} s of training (synchronous: whole rounds, publish to publish)")
    res.notes.append(
        "synchronous round = g + robots x E / U + o (g: one episode, E: updates an episode asks, U: learner updates/s, "
        "o: upload, publish, load); with u = U g / (robots E) and b = o / g: generation speed-up = 1 + 1/u + b, "
        "training speed-up = min(u, 1)(1 + 1/u + b) <= 2 + b at any fleet size (u per case in the JSON)")
    return res
