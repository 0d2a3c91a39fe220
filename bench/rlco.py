"""rlco: RL-Co against its ablations on the FetchPush sim/real twin, seeds averaged.

One D_sim (the scripted expert on the simulator) and one D_real (the expert as the scripted
operator on the twin, recorded through the real path: ``edge-agent record`` into a learner)
are made once and shared by every variant and seed (versioned files under
``bench/results/rlco-datasets/``, reused by later runs with the same settings). Then, per seed,
the recipe (``cloud.rlco``) runs each variant and its policy is evaluated on the real twin over
the same seeded episodes (full run: through the real path, edge-agents served the policy by a
learner; quick run: the twin stepped in process):

- ``sft_real``: SFT on D_real only (no sim data, no RL).
- ``stage1``: Stage I co-training only (alpha), no RL.
- ``stage1_flow``: Stage I co-training of the flow-matching head (``sft.policy = "flow"``, chunks of
  4, 2 run then it replans), no RL (Stage II trains the Gaussian only).
- ``stage1_cnn``, ``stage1_cnn_flow``: Stage I co-training of the camera policies (``sft.policy = "cnn"``,
  the cnn_gaussian actor; ``"cnn_flow"``, the flow head over the same conv encoder) on one 32x32
  ``external_camera_0`` view and the state, no RL. Only when named (``--variants``) or in the quick
  run: at the full budgets their Stage I is ~10 min per seed on a 2-core CPU.
- ``rlco``: Stage I, then Stage II with beta * SFT(D_real).
- ``no_real_rl`` (beta = 0): Stage I, then RL without the real-SFT term.
- ``no_real`` (alpha = 1, beta = 0): no real supervision in either stage.
- ``no_stage1`` (alpha = 0): Stage II from the real-only SFT start.

Stage I results are shared between variants with the same alpha, policy and seed (stage1, rlco and
no_real_rl start from one Stage I run). Reported: mean and std of real success over seeds per
variant; a ratio row (Stage II env steps/s against raw single-env steps/s, measured in this
run) for the smoke test. Plot: ``docs/rlco.png`` (full) or ``bench/results/rlco-quick.png``.

    python -m bench rlco [--quick]
    python -m bench.rlco --variants stage1,stage1_flow [--seeds 0,1,2] [--quick | --reduced]   (some variants
        only; printed and saved as bench/results/rlco-variants.json, not the docs' rlco results; --reduced: the
        Stage I comparisons' budgets, D_sim 60 and D_real 20 in process, 800 updates, 20 episodes in process;
        --eval-episodes N: a larger evaluation set)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import common as C

SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
ALPHA, BETA = 0.5, 0.1
FLOW_LR = 3e-3  # the flow loss (an MSE on a noisy target) trains best with larger steps: bench/flow_sft.py
CAMERA = {"name": "overhead", "view": "external_camera_0", "size": 32}  # the camera variants' one view
DATASETS = C.RESULTS / "rlco-datasets"
DOCS_PNG = C.ROOT / "docs" / "rlco.png"

FULL: dict[str, Any] = {
    "datasets": {"sim_episodes": 300, "real_episodes": 40, "real_via": "real_path"},
    "sft": {"updates": 2000, "checkpoint_every": 1000},
    "rl": {"envs": 8, "iterations": 8, "steps": 50, "minibatch": 100, "checkpoint_every": 4},
    "eval": {"episodes": 20, "robots": 4, "via": "real_path", "rate_hz": 50.0},
}
QUICK: dict[str, Any] = {
    "datasets": {"sim_episodes": 4, "real_episodes": 3, "real_via": "in_process", "success_only": False},
    "sft": {"updates": 100, "checkpoint_every": 100, "hidden": [64, 64]},
    "rl": {"envs": 2, "iterations": 1, "steps": 20, "minibatch": 40, "epochs": 1, "checkpoint_every": 1},
    "eval": {"episodes": 2, "robots": 1, "via": "in_process"},
    "camera": {"size": 16}, "cnn": {"cnn_channels": [4, 4], "cnn_latent": 8, "batch_size": 32},
}
# Stage I comparisons on the shared 2-core machine (the flow and camera tables of docs/rlco.md): no Stage II
REDUCED: dict[str, Any] = {
    "datasets": {"sim_episodes": 60, "real_episodes": 20, "real_via": "in_process"},
    "sft": {"updates": 800, "checkpoint_every": 400},
    "rl": FULL["rl"],
    "eval": {"episodes": 20, "robots": 4, "via": "in_process", "rate_hz": 50.0},
}


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    alpha: float
    beta: float
    rl: bool
    policy: str = "gaussian"
    lr: float | None = None  # Stage I's (None: the config's default)

    @property
    def cameras(self) -> bool:
        return self.policy in ("cnn", "cnn_flow")


VARIANTS = (
    Variant("sft_real", "SFT on D_real only", 0.0, 0.0, False),
    Variant("stage1", "Stage I co-training only", ALPHA, 0.0, False),
    Variant("stage1_flow", "Stage I co-training, flow head", ALPHA, 0.0, False, "flow", FLOW_LR),
    Variant("stage1_cnn", "Stage I co-training, CNN (camera + state)", ALPHA, 0.0, False, "cnn"),
    Variant("stage1_cnn_flow", "Stage I co-training, CNN flow head", ALPHA, 0.0, False, "cnn_flow", FLOW_LR),
    Variant("rlco", "RL-Co (Stage I + II)", ALPHA, BETA, True),
    Variant("no_real_rl", "ablation: beta = 0", ALPHA, 0.0, True),
    Variant("no_real", "ablation: alpha = 1, beta = 0", 1.0, 0.0, True),
    Variant("no_stage1", "ablation: no Stage I (real-only SFT start)", 0.0, BETA, True),
)


def _config(base: dict[str, Any], root: Path, v: Variant, seed: int) -> Any:
    from cloud.rlco.config import RLCoConfig

    d = json.loads(json.dumps(base))
    d["run_dir"] = str(root / f"{v.name}-s{seed}")
    d["seed"] = seed
    d["datasets"]["dir"] = str(DATASETS)
    camera, cnn = d.pop("camera", {}), d.pop("cnn", {})
    d["sft"].update(alpha=v.alpha, policy=v.policy)
    if v.lr is not None:
        d["sft"]["lr"] = v.lr
    if v.cameras:
        d["cameras"] = [{**CAMERA, **camera}]
        d["sft"].update(cnn)
    d["rl"]["beta"] = v.beta
    d["eval"]["after"] = ["rl"] if v.rl else ["sft"]
    return RLCoConfig.model_validate(d)


def _adopt_stage1(recipe: Any, donor: Path) -> None:
    """Start ``recipe``'s run with the finished Stage I of ``donor`` (same alpha, seed, datasets)."""
    shutil.copytree(donor / "stages" / "sft", recipe.dir / "stages" / "sft", dirs_exist_ok=True)
    (recipe.dir / "stages" / "sft" / "eval.json").unlink(missing_ok=True)
    recipe.state["done"].append("sft")
    recipe._save_state()
    recipe.event(event="stage_adopted", stage="sft", source=str(donor))


def run_variant(base: dict[str, Any], root: Path, v: Variant, seed: int,
                stage1_runs: dict[tuple[float, str, int], Path]) -> dict[str, Any]:
    from cloud.rlco.stages import Recipe

    cfg = _config(base, root, v, seed)
    recipe = Recipe(cfg)
    recipe.open(resume=False)
    t0 = time.monotonic()
    donor = stage1_runs.get((v.alpha, v.policy, seed))
    if donor is not None:
        _adopt_stage1(recipe, donor)
    recipe.stage_sft()
    stage1_runs.setdefault((v.alpha, v.policy, seed), recipe.dir)
    if v.rl:
        recipe.stage_rl()
    recipe.stage_eval()
    summary = recipe.summary()
    final = summary["stages"][1 if v.rl else 0]
    train = final.get("train", {})
    return {"variant": v.name, "seed": seed, "success": final["success"], "episodes": final["episodes"],
            "via": final["via"], "seconds": round(time.monotonic() - t0, 1),
            "env_steps_per_s": train.get("env_steps_per_s"), "sim_success": train.get("sim_success")}


def raw_env_rate(steps: int = 200) -> float:
    """Steps/s of one unperturbed Fetch env with zero actions: the baseline of the PPO speed row."""
    from hal_drivers.mujoco_fetch import FetchRobot
    from hal_drivers.mujoco_fetch.config import FetchConfig

    robot = FetchRobot(FetchConfig(task="push", seed=0))
    try:
        robot.reset()
        t0 = time.monotonic()
        for _ in range(steps):
            res = robot.step(np.zeros(4, np.float32))
            if res.truncated or res.terminated:
                robot.reset()
        return steps / (time.monotonic() - t0)
    finally:
        robot.close()


def plot(rows: list[dict[str, Any]], path: Path, variants: tuple[Variant, ...] = VARIANTS) -> None:
    """Bars of mean real success per variant, std whiskers and each seed's dot (Pillow: matplotlib is not a
    dependency, see cloud/plot.py)."""
    from PIL import Image, ImageDraw, ImageFont

    w, h, left, top, bottom = 900, 420, 60, 40, 120
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    plot_h = h - top - bottom
    y = lambda v: top + plot_h * (1.0 - v)  # noqa: E731
    for t in np.linspace(0, 1, 6):
        d.line([(left, y(t)), (w - 20, y(t))], fill=(225, 225, 225))
        d.text((left - 34, y(t) - 6), f"{t:.0%}", fill=(30, 30, 30), font=font)
    d.text((left, 12), "RL-Co on FetchPush: success on the real twin (bars: mean, whiskers: std, dots: seeds)",
           fill=(30, 30, 30), font=font)
    colours = [(153, 153, 153), (102, 153, 204), (68, 119, 170), (34, 170, 102), (238, 153, 68), (204, 68, 68),
               (170, 119, 204), (119, 85, 51), (68, 170, 170)]
    slot = (w - 20 - left) / len(variants)
    for i, v in enumerate(variants):
        pts = [r["success"] for r in rows if r["variant"] == v.name]
        if not pts:
            continue
        m, s = float(np.mean(pts)), float(np.std(pts))
        x0, x1 = left + slot * i + slot * 0.2, left + slot * (i + 1) - slot * 0.2
        d.rectangle([x0, y(m), x1, y(0)], fill=colours[VARIANTS.index(v) % len(colours)])
        xc = (x0 + x1) / 2
        d.line([(xc, y(min(1, m + s))), (xc, y(max(0, m - s)))], fill=(0, 0, 0), width=2)
        for p in pts:
            d.ellipse([xc - 3, y(p) - 3, xc + 3, y(p) + 3], fill=(0, 0, 0))
        d.text((x0 - 8, y(m) - 16), f"{m:.0%}", fill=(30, 30, 30), font=font)
        label = v.label.replace("ablation: ", "")
        for k, part in enumerate([label[j:j + 20] for j in range(0, len(label), 20)]):
            d.text((x0 - 10, h - bottom + 8 + 12 * k), part, fill=(30, 30, 30), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def pick(names: list[str] | None, quick: bool = False) -> tuple[Variant, ...]:
    """The variants named, in the table's order (None: all in the quick run, the full run leaves out the camera
    variants); ValueError naming an unknown one."""
    if names is None:
        return tuple(v for v in VARIANTS if quick or not v.cameras)
    known = {v.name for v in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown variant(s) {unknown or names}: choose from {', '.join(v.name for v in VARIANTS)}")
    return tuple(v for v in VARIANTS if v.name in names)


def run(quick: bool = False, variants: list[str] | None = None, seeds: tuple[int, ...] | None = None,
        reduced: bool = False, eval_episodes: int | None = None) -> C.Result:
    import torch

    torch.set_num_threads(1)
    base, default_seeds = (QUICK, QUICK_SEEDS) if quick else (REDUCED if reduced else FULL, SEEDS)
    if eval_episodes is not None:
        base = {**base, "eval": {**base["eval"], "episodes": eval_episodes}}
    seeds = seeds or default_seeds
    chosen = pick(variants, quick)
    if any(v.cameras for v in chosen):  # MuJoCo picks its GL backend at its first import, which a state
        os.environ.setdefault("MUJOCO_GL", "egl")  # variant's robot would otherwise do without one
    res = C.Result("rlco-reduced" if reduced else "rlco" if variants is None else "rlco-variants", quick)
    root = Path(tempfile.mkdtemp(prefix="fleetrl-bench-rlco-"))
    stage1_runs: dict[tuple[float, str, int], Path] = {}
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for seed in seeds:
        for v in chosen:
            r = run_variant(base, root, v, seed, stage1_runs)
            rows.append(r)
            print(f"  rlco seed {seed} {v.name:<15} real success {r['success']:.2f} ({r['episodes']} episodes, "
                  f"{r['via']}, {r['seconds']:.0f} s)", flush=True)
    for v in chosen:
        s = [r["success"] for r in rows if r["variant"] == v.name]
        res.add(f"FetchPush twin, {v.label}", "real success (mean)", float(np.mean(s)), "",
                note=f"std {np.std(s):.2f} over {len(s)} seed(s): {', '.join(f'{x:.2f}' for x in s)}")
    ppo = [r["env_steps_per_s"] for r in rows if r.get("env_steps_per_s")]
    if ppo:
        raw = raw_env_rate()
        res.add("Stage II PPO (incl. updates)", "env steps/s", float(np.mean(ppo)), "steps/s", baseline=raw,
                ratio=float(np.mean(ppo)) / raw, note=f"{base['rl']['envs']} envs in one process; baseline: one env, "
                "zero actions, no policy")
    ds = {p.name: json.loads((p / "manifest.json").read_text()) for p in sorted(DATASETS.glob("d_*"))
          if (p / "manifest.json").exists()}
    first = root / f"{rows[0]['variant']}-s{rows[0]['seed']}" / "state.json"
    used = {Path(v).name for v in json.loads(first.read_text())["datasets"].values()}
    res.extra = {"rows": rows, "budgets": base, "alpha": ALPHA, "beta": BETA, "seconds": time.monotonic() - t0,
                 "datasets": {k: {f: m.get(f) for f in ("rows", "episodes", "recorded", "succeeded", "kept", "seconds")}
                              for k, m in ds.items() if k in used}}
    png = (C.RESULTS / f"{res.name}-quick.png" if quick else DOCS_PNG if res.name == "rlco"
           else C.RESULTS / f"{res.name}.png")
    plot(rows, png, chosen)
    res.notes.append(f"plot: {png.relative_to(C.ROOT)}")
    shutil.rmtree(root, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.rlco", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=lambda v: v.split(","), default=None,
                    help=f"comma-separated, from {','.join(v.name for v in VARIANTS)} (default: all)")
    ap.add_argument("--seeds", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                    help="comma-separated seeds (default: 0,1,2; quick: 0)")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--quick", action="store_true", help="the quick run's budgets")
    how.add_argument("--reduced", action="store_true", help="the Stage I comparisons' budgets (see above)")
    ap.add_argument("--eval-episodes", type=int, default=None, metavar="N",
                    help="episodes in the evaluation set (default: the budgets'; the first of each twin's are the same)")
    a = ap.parse_args(argv)
    try:
        chosen = pick(a.variants, a.quick)
    except ValueError as e:
        ap.error(str(e))
    if a.eval_episodes is not None and not 1 <= a.eval_episodes <= 10_000:
        ap.error(f"--eval-episodes must be in 1..10000, got {a.eval_episodes}")
    res = run(a.quick, [v.name for v in chosen] if a.variants else None, a.seeds, a.reduced, a.eval_episodes)
    C.print_result(res)
    print(f"  json: {C.save_result(res).relative_to(C.ROOT)}")


if __name__ == "__main__":
    main()
