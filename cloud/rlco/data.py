"""What the recipe's config means for datasets and sim envs: D_sim, D_real and the sim workers.

D_sim: the scripted expert on the unperturbed simulator, stepped in this process (the sim side).
D_real: the same expert as the ``scripted_fetch`` operator on the real twin, recorded through the
real path (``realpath.record``) or, with ``datasets.real_via = "in_process"``, stepped here.
Both are versioned by every setting that shapes their rows (``datasets``, and the ``cameras``
whose frames they carry when the policy reads cameras: cnn, cnn_flow).
"""

from __future__ import annotations

from typing import Any, Callable

from hal_drivers.mujoco_fetch import FetchRobot
from hal_drivers.mujoco_fetch.config import STATE_FIELDS, FetchConfig
from hal_drivers.teleop.scripted import CONTROLLERS

from . import realpath
from .config import RLCoConfig
from .datasets import Dataset, expert_table, get_or_make, successful_episodes
from .vecenv import VecEnv

SIM_SEED_OFFSET = 50_000  # D_sim's robot seeds; the eval set starts at eval.seed (1000): apart


def obs_fields() -> tuple[str, ...]:
    return tuple(STATE_FIELDS)


def _settings(cfg: RLCoConfig, real: bool) -> dict[str, Any]:
    d = cfg.datasets
    s: dict[str, Any] = {"task": cfg.task, "expert": "scripted_fetch", "noise": d.noise, "seed": d.seed,
                         "success_only": d.success_only}
    if cfg.cameras:  # state-only versions keep their old keys (and files)
        s["cameras"] = cfg.robot_extra()
    if real:
        s.update(episodes=d.real_episodes, via=d.real_via, dynamics=cfg.real.model_dump(mode="json"))
    else:
        s.update(episodes=d.sim_episodes)
    return s


def datasets(cfg: RLCoConfig, progress: Callable[[str, int, int, dict[str, float]], None]
             ) -> list[tuple[str, Dataset, bool]]:
    """[("sim", D_sim, made now), ("real", D_real, made now)], reused when their version is on disk."""
    d = cfg.datasets
    expert = CONTROLLERS[cfg.task]

    def make_sim() -> Any:
        robot = FetchRobot(FetchConfig(task=cfg.task, seed=d.seed + SIM_SEED_OFFSET, **cfg.robot_extra()))
        try:
            return expert_table(robot, expert, d.sim_episodes, d.noise, d.seed, d.success_only, "sim-expert",
                                lambda i, n: progress("D_sim (scripted expert, sim)", i, n, {}))
        finally:
            robot.close()

    def make_real() -> Any:
        options = {"task": cfg.task, "seed": d.seed + 1, "dynamics": cfg.real.model_dump(mode="json"),
                   **cfg.robot_extra()}
        if d.real_via == "in_process":
            robot = FetchRobot(FetchConfig(**options))
            try:
                return expert_table(robot, expert, d.real_episodes, d.noise, d.seed + 1, d.success_only, "real-demo-0",
                                    lambda i, n: progress("D_real (scripted operator, twin)", i, n, {}))
            finally:
                robot.close()
        import shutil

        probe = FetchRobot(FetchConfig(**options))
        spec = probe.describe().episode_spec()
        probe.close()
        progress("D_real (edge-agent record, real path)", 0, d.real_episodes, {})
        operator = {"task": cfg.task, "mode": "always", "noise": d.noise, "seed": d.seed + 1}
        where = cfg.run_dir / "record-real"  # the recording learner's data and the agent's log, for people
        shutil.rmtree(where, ignore_errors=True)
        table = realpath.record(where, options, operator, d.real_episodes, spec)
        progress("D_real (edge-agent record, real path)", d.real_episodes, d.real_episodes, {})
        recorded = len(set(table.column("episode_id").to_pylist()))
        kept = successful_episodes(table) if d.success_only else table
        n_kept = len(set(kept.column("episode_id").to_pylist()))
        return kept, {"recorded": recorded, "succeeded": len(set(successful_episodes(table).column("episode_id")
                                                                  .to_pylist())), "kept": n_kept}

    out = []
    for name, real, make in (("sim", False, make_sim), ("real", True, make_real)):
        ds, made = get_or_make(d.dir, f"d_{name}", _settings(cfg, real), make)
        out.append((name, ds, made))
    return out


def sim_envs(cfg: RLCoConfig, first_seed: int) -> VecEnv:
    """``rl.envs`` unperturbed Fetch envs (the simulator), seeded first_seed, first_seed + 1, ..."""
    seeds = [first_seed + i for i in range(cfg.rl.envs)]
    return VecEnv(lambda s: FetchRobot(FetchConfig(task=cfg.task, seed=s)), seeds, obs_fields())
