"""``python -m bench hil_reward``: learning from a success classifier's reward vs the driver's reward.

FetchReach with a 64x64 overhead camera on each robot, a state policy (SAC).
First labelled frames are recorded through the real path: one robot driven by
the scripted operator (`edge-agent record`, reaching the goal) and one acting
at random, into a learner that does not train; a classifier is trained on
their next frames with `cloud-learner classifier train` (labels: each row's
`success` flag, standing in for a person's labels). Then two runs for the same
wall-clock budget, each a fresh learner and two robots: `env` (the driver's
dense reward) and `classifier` (`learner.reward = "classifier"`: the learner
never reads the driver's reward; robots end an episode when the classifier they
received with the policy sees success). Success is the env's own flag of each
stored episode (measurement only), over the last 50 episodes.

    python -m bench hil_reward            # ~12 min
    python -m bench.hil_reward --minutes 3
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import common as C
from .hil import agent_table, every_robot_has_an_episode, start_learner, wait_done, write_agent
from .hil_episodes import curve, read_episodes, time_to, windowed_rate

FULL_MINUTES, QUICK_MINUTES = 5.0, 0.5  # quick: a cap; the smoke run ends once every robot has an episode
LABEL_EPISODES, QUICK_LABEL_EPISODES = 20, 3
ROBOTS, WINDOW, TARGET = 2, 50, 0.8
RATE_HZ = 25.0
CAMERA = {"name": "overhead", "view": "external_camera_0", "size": 64, "codec": "raw"}  # cloud/demo.py's view
ROBOT = {"task": "reach", "dense_reward": True, "cameras": [CAMERA], "camera_antialias": False}
LEARNER: dict[str, Any] = {
    "batch_size": 256, "hidden": [256, 256], "lr": 1e-3, "gamma": 0.98, "learning_starts": 1000, "publish_every": 50,
    "checkpoint_every": 10**6, "threads": 1, "device": "cpu", "utd_ratio": 1.0, "prefetch_batches": 2,
    "image_memory_mb": 64,
}
_minutes_override: float | None = None


def record_labels(root: Path, episodes: int) -> Path:
    """Successes (the scripted operator) and failures (random actions) with their frames, stored by a learner."""
    lrn = start_learner(root, "labels", {**LEARNER, "learning_starts": 10**9})
    try:
        oracle = write_agent(agent_table("oracle", lrn.url, root, seed=700, rate_hz=0, robot=ROBOT,
                                         teleop={"task": "reach", "mode": "always", "noise": 0.3, "seed": 7}), root)
        rand = write_agent(agent_table("random", lrn.url, root, seed=701, rate_hz=0, max_episodes=episodes,
                                       robot=ROBOT, teleop=None), root)
        p1 = C.spawn([sys.executable, "-m", "edge_agent", "record", "--config", str(oracle), "--episodes",
                      str(episodes), "--drain-timeout", "60"], oracle.parent / "record.log")
        p2 = C.spawn([sys.executable, "-m", "edge_agent", "run", "--config", str(rand), "--drain-timeout", "60"],
                     rand.parent / "agent.log")
        wait_done(p1, oracle.parent / "record.log", "edge-agent record", 600)
        wait_done(p2, rand.parent / "agent.log", "edge-agent run (random actions)", 600)
    finally:
        lrn.stop()
    return lrn.data_dir


def train_classifier(data_dir: Path, out: Path, quick: bool) -> dict[str, float]:
    log = out.with_suffix(".log")
    with open(log, "ab") as summary:  # the summary is printed on stdout, progress on stderr: both into the log
        p = C.spawn([sys.executable, "-m", "cloud", "classifier", "train", "--data", str(data_dir), "--camera", "overhead",
                     "--out", str(out), "--epochs", "5" if quick else "20"], log, stdout=summary)
    wait_done(p, log, "cloud-learner classifier train", 1200)
    m = re.search(r"held-out: accuracy ([0-9.]+), balanced ([0-9.]+), precision ([0-9.]+), recall ([0-9.]+) "
                  r"\((\d+) frames\)", log.read_text())
    if m is None:
        raise RuntimeError(f"no held-out scores in {log}")
    keys = ("accuracy", "balanced accuracy", "precision", "recall", "frames")
    return {k: float(v) for k, v in zip(keys, m.groups())}


def run_pair(root: Path, classifier: Path, minutes: float, rate_hz: float,
             quick: bool = False) -> dict[str, dict[str, Any]]:
    """The two runs, one after the other, each for ``minutes`` (``quick``: side by side, ending as soon as
    every robot of both has an episode stored: a smoke run needs the pipeline run, not a curve; ``minutes``
    is then the cap)."""
    runs = [("env", {}), ("classifier", {"reward": "classifier", "classifier": str(classifier)})]
    out: dict[str, dict[str, Any]] = {}

    def start(name: str, extra: dict[str, Any]) -> tuple[str, Path, C.Learner, int, list]:
        d = root / name
        lrn = start_learner(d, "learner", {**LEARNER, **extra})
        t0 = time.time_ns()
        agents = [C.start_agent(write_agent(agent_table(f"sim-{i}", lrn.url, d, seed=200 + i, rate_hz=rate_hz,
                                                        robot=ROBOT, teleop=None), d), drain_timeout=10)
                  for i in range(ROBOTS)]
        return name, d, lrn, t0, agents

    def stop(run: tuple[str, Path, C.Learner, int, list]) -> None:
        name, _, lrn, t0, agents = run
        try:
            status = lrn.status()
        except OSError:
            status = {}
        for a in agents:  # all signalled first: each drains its spool to the learner at the same time
            if a.poll() is None:
                a.send_signal(signal.SIGTERM)
        for a in agents:
            C.stop(a, timeout=30)
        lrn.stop()
        eps = [e for e in read_episodes(lrn.data_dir) if e.end_ns - t0 <= minutes * 60e9]
        out[name] = {"t0": t0, "episodes": eps, "status": status, "error": errors.get(name, "")}

    for group in ([runs] if quick else [[r] for r in runs]):
        with ThreadPoolExecutor(len(group)) as pool:  # learners start (import torch, bind) side by side
            started = list(pool.map(lambda r: start(*r), group))
        deadline = time.monotonic() + minutes * 60
        errors: dict[str, str] = {}
        while time.monotonic() < deadline and len(errors) < len(started):
            for name, d, lrn, _, agents in started:
                dead = [p for p in (lrn.proc, *agents) if p is not None and p.poll() is not None]
                if dead and name not in errors:
                    errors[name] = f"{name}: a process exited early (code {dead[0].returncode}); logs in {d}"
            if quick and all(n in errors or every_robot_has_an_episode(lrn, ROBOTS) for n, _, lrn, _, _ in started):
                break
            time.sleep(0.25 if quick else 1.0)  # a benchmark's poll interval, not synchronisation
        with ThreadPoolExecutor(len(started)) as pool:
            list(pool.map(stop, started))
    return {name: out[name] for name, _ in runs}


def run(quick: bool = False, minutes: float | None = None) -> C.Result:
    minutes = minutes or _minutes_override or (QUICK_MINUTES if quick else FULL_MINUTES)
    res = C.Result("hil_reward", quick)
    root = Path(tempfile.mkdtemp(prefix="fleetrl-bench-hil-reward-"))
    labels = record_labels(root, QUICK_LABEL_EPISODES if quick else LABEL_EPISODES)
    clf = root / "success.safetensors"
    scores = train_classifier(labels, clf, quick)
    n = QUICK_LABEL_EPISODES if quick else LABEL_EPISODES
    res.add("classifier", "held-out balanced accuracy", scores["balanced accuracy"], "", 0.5,
            C.ratio(scores["balanced accuracy"], 0.5), "> 1.0x (chance: 0.5)", scores["balanced accuracy"] > 0.5,
            note=f"cloud-learner classifier train on {n} scripted + {n} random FetchReach episodes, 64x64 overhead "
            f"camera, {scores['frames']:.0f} held-out frames")
    res.add("classifier", "held-out precision", scores["precision"], "", note=f"recall {scores['recall']:.3f}")
    runs = run_pair(root, clf, minutes, 0.0 if quick else RATE_HZ, quick=quick)
    finals = {}
    for name, r in runs.items():
        c = curve(r["episodes"], r["t0"], WINDOW)
        final = windowed_rate(r["episodes"], WINDOW)
        finals[name] = final
        reached = time_to(c, TARGET, WINDOW)
        case = f"FetchReach, reward = {name}"
        res.add(case, f"success, last {WINDOW} episodes", final, "", note=f"{len(r['episodes'])} episodes in {minutes:g} min")
        res.add(case, "time to 80%", reached, "s", note="" if reached is not None else f"not reached in {minutes:g} min")
        res.add(case, "gradient updates", float(r["status"].get("updates", 0) or 0), "")
        res.extra[name] = {"curve": c, "status": r["status"]}
    env, clf_rate = finals.get("env"), finals.get("classifier")
    res.add("FetchReach, classifier vs env reward", f"success, last {WINDOW} episodes", clf_rate, "", env,
            C.ratio(clf_rate, env), ">= 0.9x", None if clf_rate is None or not env else clf_rate >= 0.9 * env)
    res.notes.append(f"each run: a fresh learner (SAC, CPU, 1 thread, state policy) and {ROBOTS} FetchReach robots "
                     f"filming overhead 64x64 for {minutes:g} min; success = the env's flag of each stored episode "
                     "(measurement only: the classifier run's learner never reads the driver's reward)")
    errors = [r["error"] for r in runs.values() if r["error"]]
    if errors:
        res.error = "; ".join(errors)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    global _minutes_override
    p = argparse.ArgumentParser(prog="python -m bench.hil_reward", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=None, help=f"budget per run (default {FULL_MINUTES:g})")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    _minutes_override = a.minutes
    res = run(quick=a.quick)
    C.print_result(res)
    C.save_result(res)
    C.kill_all()
    return 1 if res.error else 0


if __name__ == "__main__":
    raise SystemExit(main())
