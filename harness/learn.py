"""How fast a real learner teaches real edge-agents on one driver: the success rate over time.

    python -m harness.learn --driver point_mass --seconds 40 --option dims=2

starts ``cloud serve`` (SAC) and ``--robots`` ``edge_agent run`` processes on
``--driver`` through :mod:`harness.procs`, polls the learner's /status and
prints one line per poll, then a JSON summary: when each success rate in
``--targets`` was first reached (over the learner's window of recent episodes).
A check that a driver is learnable, and how fast; not a test (no assertions).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .procs import Agent, Learner, kill_all

# SAC settings for small state-only tasks: the harness's tiny defaults are for plumbing tests.
LEARNER: dict[str, Any] = {"learning_starts": 500, "publish_every": 50, "batch_size": 128, "hidden": [64, 64],
                           "checkpoint_every": 100_000, "utd_ratio": 1.0, "seed": 0}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def learn(root: Path, driver: str, options: dict[str, Any], seconds: float, robots: int = 1, rate_hz: float = 400.0,
          random_steps: int = 500, learner: dict[str, Any] | None = None, targets: tuple[float, ...] = (0.5, 0.8, 0.9),
          every: float = 1.0, quiet: bool = False) -> dict[str, Any]:
    """Run a learner and ``robots`` agents on ``driver`` for ``seconds``; the success curve and when targets were met."""
    lr = Learner(root, learner={**LEARNER, **(learner or {})}).start()
    agents = [
        Agent(root, f"{driver}-{i}", [lr.url], episodes=0, rate_hz=rate_hz, chunk_steps=25, driver=driver,
              driver_options={**options, "seed": int(options.get("seed", 0)) * 100 + i},
              control={"random_steps": random_steps, "seed": i}).start()
        for i in range(robots)
    ]
    curve: list[dict[str, Any]] = []
    reached: dict[str, float | None] = {f"{t:g}": None for t in targets}
    t0 = time.monotonic()
    try:
        while (t := time.monotonic() - t0) < seconds:
            time.sleep(every)
            for a in agents:
                if a.proc is not None and a.proc.poll() is not None:
                    raise RuntimeError(f"{a.robot_id} exited with {a.proc.returncode}: {a.log.read_text()[-2000:]}")
            try:
                s = lr.status()
            except OSError:
                continue
            point = {"t_s": round(t, 1), "success_rate": s.get("success_rate"), "episodes": s.get("episodes", 0),
                     "rows": s.get("buffer_rows", 0), "updates": s.get("updates", 0),
                     "policy_version": s.get("policy_version", 0)}
            curve.append(point)
            if not quiet:
                print(json.dumps(point), flush=True)
            rate = point["success_rate"]
            if rate is not None and point["episodes"] >= 50:
                for k in reached:
                    if reached[k] is None and rate >= float(k):
                        reached[k] = point["t_s"]
    finally:
        for a in agents:
            a.kill()
        lr.stop()
    last = curve[-1] if curve else {}
    return {"driver": driver, "options": options, "robots": robots, "rate_hz": rate_hz, "seconds": seconds,
            "reached_s": reached, "final": last, "curve": curve}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--driver", default="point_mass")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a [robot.options] entry (JSON value)")
    p.add_argument("--learner", action="append", default=[], metavar="KEY=VALUE", help="a [learner] entry (JSON value)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--robots", type=int, default=1)
    p.add_argument("--rate-hz", type=float, default=400.0, help="each robot's control rate (0: as fast as it steps)")
    p.add_argument("--random-steps", type=int, default=500)
    p.add_argument("--dir", type=Path, default=None, help="keep the run here (default: a temporary directory)")
    args = p.parse_args(argv)
    options = {k: _value(v) for k, v in (o.split("=", 1) for o in args.option)}
    learner = {k: _value(v) for k, v in (o.split("=", 1) for o in args.learner)}
    with tempfile.TemporaryDirectory(prefix="fleetrl-learn-") as tmp:
        root = args.dir or Path(tmp)
        try:
            out = learn(root, args.driver, options, args.seconds, args.robots, args.rate_hz, args.random_steps, learner)
        finally:
            kill_all()
    out.pop("curve")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
