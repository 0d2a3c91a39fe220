"""pixels: the learning curve of the pixel demo (``cloud-learner demo --obs pixels``).

Two simulated Fetch arms film the workspace with two 64x64 views; the policy
sees those frames and the gripper's own state, never the goal vector. The run
stops at 80% success over the last 50 episodes or at the time cap (30 min;
quick: 3 min). Reported: time to 80%, or the success reached at the cap,
against the 80% target in the same run; the learner trains on a GPU when torch
sees one (device "auto"), else on this machine's CPUs. The curve goes to
``docs/pixels_curve.png`` (full runs) and ``bench/results/pixels[-quick].png``.

    python -m bench pixels [--quick]
    python -m bench.pixels --minutes 10 [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common as C

TARGET = 0.8
FULL_MINUTES, QUICK_MINUTES = 30.0, 3.0
ROBOTS = 2
DOCS_PNG = C.ROOT / "docs" / "pixels_curve.png"
_minutes_override: float | None = None  # set by ``python -m bench.pixels --minutes``


def run(quick: bool = False, minutes: float | None = None) -> C.Result:
    from cloud import demo

    minutes = minutes or _minutes_override or (QUICK_MINUTES if quick else FULL_MINUTES)
    gpu = demo._gpu_seen()
    res = C.Result("pixels", quick)
    run_dir = Path(tempfile.mkdtemp(prefix="fleetrl-bench-pixels-"))
    t0 = time.monotonic()
    rc = demo.run_demo(robots=ROBOTS, minutes=minutes, target=TARGET, rate_hz=None, task="reach",
                       run_dir=run_dir, seed=0, obs="pixels")
    wall = time.monotonic() - t0
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        res.error = f"the demo ended (code {rc}) without a summary; logs in {run_dir / 'logs'}"
        return res
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    s = summary.get("status") or {}
    reached = summary.get("reached_s")
    final = s.get("success_rate")
    case = f"Fetch-reach, {ROBOTS} robots, 2 views 64x64, learner on {'GPU' if gpu else 'CPU'}"
    res.add(case, "time to 80% success", reached, "s", target=f"<= {minutes:g} min", ok=reached is not None)
    res.add(case, "success, last 50 episodes", final, "", TARGET, C.ratio(final, TARGET), ">= 1.0x",
            None if final is None else final >= TARGET, note="at the target" if reached else f"at the {minutes:g} min cap")
    res.add(case, "success, first 20 episodes", summary.get("first_rate"), "", note="mostly random actions")
    res.add(case, "gradient updates", float(s.get("updates", 0)), "")
    res.add(case, "updates/s (last reading)", s.get("updates_per_s"), "1/s")
    res.add(case, "transitions", float(s.get("buffer_rows", 0)), "", note=f"{s.get('episodes', 0)} episodes")
    res.extra.update(summary=summary, minutes=minutes, wall_s=wall, gpu_seen=gpu, demo_rc=rc,
                     cameras=demo.PIXEL_CAMERAS, learner=demo.pixel_learner_settings(gpu))
    png = run_dir / demo.CURVE_PNG
    if png.exists():
        C.RESULTS.mkdir(parents=True, exist_ok=True)
        kept = C.RESULTS / f"pixels{'-quick' if quick else ''}.png"
        shutil.copyfile(png, kept)
        res.notes.append(f"curve: {kept.relative_to(C.ROOT)}")
        if not quick:
            shutil.copyfile(png, DOCS_PNG)
            res.notes.append(f"curve: {DOCS_PNG.relative_to(C.ROOT)}")
    res.notes.append("the policy sees camera frames (external_camera_0 and a side view) and the gripper's state, "
                     "not the goal vector; settings in cloud/demo.py (PIXEL_CAMERAS, PIXEL_LEARNER)")
    if rc == 1:
        res.error = f"{summary.get('failed') or 'the demo failed'}; logs kept in {run_dir / 'logs'}"
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # camera frames: up to GBs of Parquet
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pixels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=None, help=f"time cap (default {FULL_MINUTES:g}, quick {QUICK_MINUTES:g})")
    p.add_argument("--quick", action="store_true", help=f"a {QUICK_MINUTES:g}-minute run; docs/ left as they are")
    a = p.parse_args(argv)
    if a.minutes is not None and a.minutes <= 0:
        p.error(f"--minutes must be positive, not {a.minutes:g}")
    from . import pixels  # this file is __main__ here; run_one imports it again as bench.pixels
    from .__main__ import run_one

    pixels._minutes_override = a.minutes

    return 1 if run_one("pixels", a.quick).error else 0


if __name__ == "__main__":
    sys.exit(main())
