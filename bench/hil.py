"""hil: humans in the loop on FetchPush, with a scripted operator standing in for the human.

FetchPush (dense reward, state observations) is hard for SAC from scratch in
minutes. First 20 demonstrations are recorded once, by real processes, as a
person would: a learner (``cloud serve``) and ``edge-agent record --episodes
20`` with the ``scripted_fetch`` teleop device in mode "always". Then each
variant runs for the same wall-clock budget, a fresh learner and two robots
(``edge-agent run``, 25 Hz, the env's own rate) each:

- ``sac``: no demonstrations.
- ``rlpd``: the 20 demos imported at start (``learner.demo_paths``), half of
  every batch from them, LayerNorm critics, a behaviour-cloning warm start and
  a behaviour-cloning term on the demo half in every actor update (``RLPD``).
- ``rlpd+operator``: the same, and on each robot the scripted operator in mode
  "correct" (``[teleop]``) takes over when the block stalls or drifts from the
  goal; its corrections go to the demo ring too.
- ``hg_dagger``: behaviour cloning on the demos and the corrections, the
  policy driving with the same operator.

Success comes from the stored episodes (the learner's Parquet segments: each
episode's last ``success`` flag, its ``intervention`` rows, the robot's
``t_ns``), as a rolling rate over the last 50 episodes against time. Reported
per variant: time to 80% (or "not reached" with the final rate), the final
rate, for operator variants the rate of episodes the policy finished alone and
the intervention rate per minute. Curves: ``docs/hil_curves.png`` (full runs)
and ``bench/results/hil[-quick].png``.

    python -m bench hil [--quick]
    python -m bench.hil --minutes 3 [--variants sac,rlpd]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from . import common as C
from .hil_episodes import Episode, curve, intervention_windows, read_episodes, time_to, windowed_rate

TARGET = 0.8
WINDOW = 50  # episodes in the rolling success rate (the learner's /status uses the same)
# quick: only a cap, the smoke run ends once every robot has an episode (a loaded machine can take a minute to link them)
FULL_MINUTES, QUICK_MINUTES = 6.0, 3.0
DEMOS, QUICK_DEMOS = 20, 3
ROBOTS = 2  # training robots (with the operator, in the operator variants)
EVAL = "eval-0"  # one more robot per variant: the policy's mean action, no operator; its episodes are the curve
RATE_HZ, QUICK_RATE_HZ = 25.0, 0.0  # quick: as fast as the robots step, to finish episodes at all
DOCS_PNG = C.ROOT / "docs" / "hil_curves.png"
PUSH = {"task": "push", "dense_reward": True}
VARIANTS = ("sac", "rlpd", "rlpd+operator", "hg_dagger")
QUICK_VARIANTS = ("rlpd+operator", "hg_dagger")  # the CI smoke run: every part (demos, RLPD, operator, BC), fewer processes
_minutes_override: float | None = None  # set by ``python -m bench.hil --minutes``
_variants_override: tuple[str, ...] | None = None

# The scripted operator (hal_drivers/teleop/scripted.py). Demos: a little noise so no two are alike.
DEMO_OPERATOR = {"task": "push", "mode": "always", "noise": 0.1, "seed": 11}
# Corrections: take over when the block has not come 1 cm closer to the goal in 20 steps (the oracle
# itself needs ~15 to get behind the block) or drifted 3 cm away; drive 25 steps, then hand back.
CORRECT_OPERATOR = {"task": "push", "mode": "correct", "noise": 0.05, "patience": 20, "progress_m": 0.01,
                    "drift_m": 0.03, "hold_steps": 25}

# Learner settings shared by every variant: a CPU learner on a small machine.
COMMON_LEARNER: dict[str, Any] = {
    "batch_size": 256, "hidden": [256, 256], "lr": 1e-3, "gamma": 0.98, "tau": 0.005, "learning_starts": 1000,
    "publish_every": 50, "memory_capacity": 200_000, "checkpoint_every": 10**6, "threads": 1, "device": "cpu",
    "utd_ratio": 2.0, "prefetch_batches": 2,
    # Fetch mixes metre-scale positions with centimetre-scale velocities: on raw inputs BC of 20 push demos
    # succeeds in 1 of 30 episodes, on standardised ones in 10 of 30 (cloud/learner/normalize.py)
    "normalize_observations": True,
}
# bc_weight: the warm start alone is undone by the first updates of still-untrained critics (the evaluation robot
# fell back to ~0); cloning the demo half inside every actor update keeps it (docs/hil.md, section 3). Returns are
# near -5 here, so 30 keeps the policy on the demonstrations while the critics learn on a starved 2-core learner.
RLPD = {"algorithm": "rlpd", "critics": 2, "critic_subset": 2, "critic_layer_norm": True, "demo_fraction": 0.5,
        "learning_starts": 500, "bc_pretrain_updates": 2000, "bc_weight": 30.0}


@dataclass
class Variant:
    name: str
    learner: dict[str, Any]
    demos: bool
    operator: bool
    episodes: list[Episode] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def variants(names: tuple[str, ...] = VARIANTS) -> list[Variant]:
    table = {
        "sac": Variant("sac", {"algorithm": "sac"}, demos=False, operator=False),
        "rlpd": Variant("rlpd", dict(RLPD), demos=True, operator=False),
        "rlpd+operator": Variant("rlpd+operator", dict(RLPD), demos=True, operator=True),
        "hg_dagger": Variant("hg_dagger", {"algorithm": "hg_dagger", "learning_starts": 100}, demos=True, operator=True),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return [table[n] for n in names]


# ---------------------------------------------------------------- configs


def learner_table(v: Variant, demo_dir: Path | None, seed: int = 0) -> dict[str, Any]:
    """The variant's [learner] table (demo_paths: the demo run's data dir)."""
    table = {**COMMON_LEARNER, **v.learner, "seed": seed}
    if v.demos:
        if demo_dir is None:
            raise ValueError(f"variant {v.name} needs the recorded demonstrations")
        table["demo_paths"] = [str(demo_dir)]
    return table


def agent_table(robot_id: str, url: str, root: Path, *, seed: int, rate_hz: float, teleop: dict[str, Any] | None,
                max_episodes: int = 0, random_steps: int = 0, deterministic: bool = False,
                robot: dict[str, Any] | None = None) -> dict[str, Any]:
    """A simulated Fetch robot's agent config (FetchPush unless ``robot`` gives other driver options), with the
    scripted operator as its teleop device."""
    d = root / robot_id
    cfg: dict[str, Any] = {
        "robot_id": robot_id,
        "link": {"url": url, **C.FAST_LINK, "allow_unauthenticated": True},
        "robot": {"driver": "mujoco_fetch", "options": {**(robot or PUSH), "seed": seed}},
        "control": {"rate_hz": rate_hz, "max_episodes": max_episodes, "chunk_steps": 50, "seed": seed,
                    "random_steps": random_steps, "deterministic": deterministic},
        "spool": {"dir": str(d / "spool"), "fsync": "never"},
        "state_dir": str(d / "state"),
        "service": {"metrics_port": 0},  # several agents on one machine
    }
    if teleop is not None:
        cfg["teleop"] = {"device": "scripted_fetch", "options": dict(teleop)}
    return cfg


def write_agent(cfg: dict[str, Any], root: Path) -> Path:
    d = root / cfg["robot_id"]
    d.mkdir(parents=True, exist_ok=True)
    path = d / "agent.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def start_learner(root: Path, name: str, learner: dict[str, Any]) -> C.Learner:
    lrn = C.Learner(root, learner=learner, name=name)
    _no_metrics_port(lrn.cfg)  # several learners on one machine: no fixed metrics port
    lrn.start()
    return lrn


def _no_metrics_port(cfg: Path) -> None:
    from shared.config import read_toml

    d = read_toml(cfg.read_text())
    d["metrics"] = {"port": 0}
    cfg.write_text(tomli_w.dumps(d))


# ---------------------------------------------------------------- phases


def wait_done(p: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    """Wait for a process that must finish by itself and exit 0 (RuntimeError with its log's tail otherwise)."""
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        C.stop(p)
        raise RuntimeError(f"{what} did not finish in {timeout:g} s; log {log}") from None
    if rc != 0:
        raise RuntimeError(f"{what} exited {rc}: {log.read_text()[-1500:]}")


def record_demos(root: Path, episodes: int, rate_hz: float, timeout: float = 300) -> tuple[Path, list[Episode]]:
    """``edge-agent record --episodes N`` with the scripted operator into a learner that does not train;
    that learner's data dir is what the variants import (``learner.demo_paths``)."""
    lrn = start_learner(root, "demos", {**COMMON_LEARNER, "learning_starts": 10**9})
    try:
        cfg = write_agent(agent_table("demo-0", lrn.url, root, seed=900, rate_hz=rate_hz, teleop=DEMO_OPERATOR), root)
        log = cfg.parent / "record.log"
        p = C.spawn([sys.executable, "-m", "edge_agent", "record", "--config", str(cfg), "--episodes", str(episodes),
                     "--drain-timeout", "60"], log)
        wait_done(p, log, f"edge-agent record ({episodes} demos)", timeout)
    finally:
        lrn.stop()
    eps = read_episodes(lrn.data_dir)
    if len(eps) < episodes:
        raise RuntimeError(f"the demo learner stored {len(eps)} of {episodes} demonstrations")
    return lrn.data_dir, eps


def run_variants(root: Path, vs: list[Variant], demo_dir: Path | None, minutes: float, rate_hz: float,
                 parallel: bool) -> None:
    """Each variant for ``minutes`` of wall clock from its own start, one after the other (``parallel``:
    all at once, the quick smoke run, which ends as soon as every robot of every variant has an episode
    stored: a smoke run needs a figure from each, not a curve; ``minutes`` is then its cap)."""
    groups = [vs] if parallel else [[v] for v in vs]
    for group in groups:
        with ThreadPoolExecutor(len(group)) as pool:  # learners start (import torch, bind) side by side
            running = list(pool.map(lambda v: _start_variant(root, v, demo_dir, rate_hz), group))
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            for v, lrn, agents in running:
                dead = [p for p in (lrn.proc, *agents) if p is not None and p.poll() is not None]
                if dead and not v.error:
                    v.error = f"{v.name}: a process exited early (code {dead[0].returncode}); logs in {lrn.root}"
            if all(v.error for v, _, _ in running):
                break
            if parallel and all(v.error or every_robot_has_an_episode(lrn) for v, lrn, _ in running):
                break
            time.sleep(1.0 if not parallel else 0.25)  # a benchmark's poll interval, not synchronisation
        for v, lrn, _ in running:
            try:
                v.status.update(lrn.status())
            except OSError:
                pass
        with ThreadPoolExecutor(len(group)) as pool:
            list(pool.map(_stop_variant, running))


def every_robot_has_an_episode(lrn: C.Learner, robots: int = ROBOTS + 1, steps: int = 50) -> bool:
    """Whether the learner stored a whole first episode (``steps`` rows: FetchPush's time limit) of each of
    ``robots`` robots (a robot's rows arrive in order, so its first ``steps`` rows are its first episode)."""
    try:
        rows = lrn.status()["rows_by_robot"]
    except (OSError, ValueError, KeyError):
        return False
    return len(rows) >= robots and all(n >= steps for n in rows.values())


def _start_variant(root: Path, v: Variant, demo_dir: Path | None, rate_hz: float) -> tuple[Variant, C.Learner, list]:
    d = root / v.name.replace("+", "-")
    lrn = start_learner(d, "learner", learner_table(v, demo_dir))
    v.status["t0_ns"] = time.time_ns()
    agents = []
    for i in range(ROBOTS):
        cfg = agent_table(f"sim-{i}", lrn.url, d, seed=100 + i, rate_hz=rate_hz,
                          teleop=CORRECT_OPERATOR if v.operator else None)
        agents.append(C.start_agent(write_agent(cfg, d), drain_timeout=10))
    ev = agent_table(EVAL, lrn.url, d, seed=300, rate_hz=rate_hz, teleop=None, deterministic=True)
    agents.append(C.start_agent(write_agent(ev, d), drain_timeout=10))
    return v, lrn, agents


def _stop_variant(running: tuple[Variant, C.Learner, list]) -> None:
    v, lrn, agents = running
    for a in agents:  # all signalled first: each drains its spool to the learner at the same time
        if a.poll() is None:
            a.send_signal(signal.SIGTERM)
    for a in agents:
        C.stop(a, timeout=30)
    lrn.stop()
    v.episodes = read_episodes(lrn.data_dir)


# ---------------------------------------------------------------- the benchmark


def run(quick: bool = False, minutes: float | None = None, names: tuple[str, ...] | None = None) -> C.Result:
    minutes = minutes or _minutes_override or (QUICK_MINUTES if quick else FULL_MINUTES)
    vs = variants(names or _variants_override or (QUICK_VARIANTS if quick else VARIANTS))
    res = C.Result("hil", quick)
    root = Path(tempfile.mkdtemp(prefix="fleetrl-bench-hil-"))
    rate = QUICK_RATE_HZ if quick else RATE_HZ
    n_demos = QUICK_DEMOS if quick else DEMOS
    demo_dir: Path | None = None
    if any(v.demos for v in vs):
        demo_dir, demo_eps = record_demos(root, n_demos, QUICK_RATE_HZ)
        ok = sum(e.success for e in demo_eps)
        res.add("demos (scripted operator)", "demonstrations recorded", float(len(demo_eps)), "",
                note=f"{ok} of {len(demo_eps)} successful; edge-agent record --episodes {n_demos}")
    run_variants(root, vs, demo_dir, minutes, rate, parallel=quick)
    report(res, vs, minutes, quick)
    errors = [v.error for v in vs if v.error]
    if errors:
        res.error = "; ".join(errors)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return res


def report(res: C.Result, vs: list[Variant], minutes: float, quick: bool) -> None:
    series: dict[str, dict[str, list[Any]]] = {}
    finals: dict[str, float | None] = {}
    budget_ns = int(minutes * 60e9)
    for v in vs:
        t0 = int(v.status.get("t0_ns", 0))
        online = [e for e in v.episodes if not e.demo and e.end_ns - t0 <= budget_ns]
        case = f"FetchPush, {v.name}"
        evals = [e for e in online if e.robot_id == EVAL]  # the policy alone: its mean action, nobody helping
        train = [e for e in online if e.robot_id != EVAL]
        finals[v.name] = _rate_rows(res, case, evals, t0, minutes, "", series, v.name)
        helped = " (training robots, operator helping)" if v.operator else " (training robots, sampled actions)"
        _rate_rows(res, case, train, t0, minutes, helped, series, f"{v.name}, training robots")
        if v.operator:
            wins = intervention_windows(train, t0, 60.0)
            if wins:
                res.add(case, "intervention rate, first minute", wins[0]["rate"], "", note="share of steps the operator drove")
                res.add(case, "intervention rate, last minute", wins[-1]["rate"], "")
            v.status["intervention_windows"] = wins
        res.add(case, "gradient updates", float(v.status.get("updates", 0)), "")
    if "sac" in finals and "rlpd" in finals:
        rl, sac = finals["rlpd"], finals["sac"]
        res.add("FetchPush, rlpd vs sac", f"success, last {WINDOW} episodes", rl, "", sac, C.ratio(rl, sac), "rlpd > sac",
                None if rl is None or sac is None else rl > sac)
    res.extra.update(minutes=minutes, robots=ROBOTS, rate_hz=QUICK_RATE_HZ if quick else RATE_HZ, curves=series,
                     learner={v.name: {**COMMON_LEARNER, **v.learner} for v in vs}, demo_operator=DEMO_OPERATOR,
                     correct_operator=CORRECT_OPERATOR,
                     status={v.name: {k: x for k, x in v.status.items() if k != "t0_ns"} for v in vs})
    png = draw(series, minutes, C.RESULTS / f"hil{'-quick' if quick else ''}.png")
    res.notes.append(f"curves: {png.relative_to(C.ROOT)}")
    if not quick and [v.name for v in vs] == list(VARIANTS):  # docs/ shows the whole comparison only
        shutil.copyfile(png, DOCS_PNG)
        res.notes.append(f"curves: {DOCS_PNG.relative_to(C.ROOT)}")
    elif len(vs) < len(VARIANTS):
        res.notes.append(f"only {', '.join(v.name for v in vs)} ran (--variants): the other variants' last figures "
                         "are in docs/hil.md")
    res.notes.append(f"each variant: a fresh learner (CPU, 1 thread), {ROBOTS} training FetchPush robots and one "
                     f"evaluation robot ({EVAL}: the policy's mean action, never an operator) for {minutes:g} min; "
                     "success = the episode's last success flag in the learner's stored segments, over the last "
                     f"{WINDOW} episodes of the evaluation robot (training robots reported apart); operator settings "
                     "in bench/hil.py (CORRECT_OPERATOR)")


def _rate_rows(res: C.Result, case: str, eps: list[Episode], t0: int, minutes: float, label: str,
               series: dict[str, dict[str, list[Any]]], key: str) -> float | None:
    """Final rate (with its ratio to the target) and time to the target; the curve into ``series``."""
    c = curve(eps, t0, WINDOW)
    series[key] = c
    final = windowed_rate(eps, WINDOW)
    reached = time_to(c, TARGET, WINDOW)
    res.add(case, f"success{label}, last {WINDOW} episodes", final, "", TARGET, C.ratio(final, TARGET), ">= 1.0x",
            None if final is None else final >= TARGET, note=f"{len(eps)} episodes in {minutes:g} min")
    res.add(case, f"time to 80%{label}", reached, "s",
            note="" if reached is not None else f"not reached in {minutes:g} min (final {C.fmt(final)})")
    return final


def draw(series: dict[str, dict[str, list[Any]]], minutes: float, out: Path) -> Path:
    """One cloud.plot chart per variant, tiled into one picture (cloud.plot draws one series a chart)."""
    from PIL import Image

    from cloud.plot import success_curve_png

    out.parent.mkdir(parents=True, exist_ok=True)
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, c) in enumerate(series.items()):
            t = [*c["t_s"], minutes * 60]  # every chart spans the whole budget, so they line up
            r = [*c["success_rate"], None]
            path = success_curve_png(Path(tmp) / f"{i}.png", t, r, f"FetchPush: {name} (last {WINDOW} episodes)",
                                     target=TARGET, size=(640, 360))
            with Image.open(path) as im:
                tiles.append(im.copy())
    cols = 2 if len(tiles) > 1 else 1
    rows = (len(tiles) + cols - 1) // cols
    w, h = tiles[0].size if tiles else (640, 360)
    sheet = Image.new("RGB", (w * cols, h * rows), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * w, (i // cols) * h))
    sheet.save(out, format="PNG")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hil", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=None, help=f"budget per variant (default {FULL_MINUTES:g})")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--quick", action="store_true", help="the CI smoke variant; docs/ left as they are")
    a = p.parse_args(argv)
    if a.minutes is not None and a.minutes <= 0:
        p.error(f"--minutes must be positive, not {a.minutes:g}")
    from . import hil  # this file is __main__ here; run_one imports it again as bench.hil
    from .__main__ import run_one

    hil._minutes_override = a.minutes
    if a.variants:
        names = tuple(n.strip() for n in a.variants.split(",") if n.strip())
        try:
            variants(names)
        except ValueError as e:
            p.error(str(e))
        hil._variants_override = names
    return 1 if run_one("hil", a.quick).error else 0


if __name__ == "__main__":
    sys.exit(main())
