"""Success on the real twin over a fixed set of seeded episodes, for one stage's policy.

The set is ``robots`` Fetch twins seeded ``seed``, ``seed + 1``, ...; each runs its share of
``episodes``. Fetch draws every episode's block and goal from the env's seeded generator and
never from the actions, so episode k of robot i starts the same whatever the policy: every
policy meets the same starts. The policy acts with its mean action, through the published
weights format (normalisation folded into the first layer), as a robot runs it; a flow policy
plans deterministic chunks (integrated from zero noise) that the robots' chunk executor plays
(``eval.chunk_overlap``, ``eval.chunk_blend_steps``), on the robots and here alike.

``real_path`` runs it on edge-agent processes (``realpath``); an agent starts acting before the
learner's first weights reach it, so episodes not wholly acted by the evaluated version are
skipped: robots run at ``eval.rate_hz`` (the twin's own 25 Hz) with slack episodes covering
``eval.link_up_s``, so the set is "the first k episodes each seeded robot ran with the policy"
(starts shift by the one or two episodes before the link came up). ``in_process`` steps the same twin
here, exactly episodes 0..k-1 of each robot.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from shared.chunk_exec import ChunkExecutor
from shared.observations import image_shapes, state_sizes
from shared.policy_runner import LoadedPolicy, load_policy
from shared.weights import WeightsBlob, decode_weights

from . import realpath
from .config import EvalConfig

MAX_PARAMS = 50_000_000


@dataclass
class EvalResult:
    success: float
    episodes: int
    per_robot: dict[str, list[bool]] = field(default_factory=dict)
    via: str = "in_process"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "episodes": self.episodes, "per_robot": self.per_robot, "via": self.via,
                "seconds": round(self.seconds, 1)}


def shares(episodes: int, robots: int) -> list[int]:
    """Episodes per robot: as even as possible, the first robots taking the remainder."""
    robots = min(robots, episodes)
    return [episodes // robots + (i < episodes % robots) for i in range(robots)]


def slack_episodes(cfg: EvalConfig, episode_steps: int = 50) -> int:
    """Extra episodes per robot covering the time its link needs to bring the weights."""
    return int(math.ceil(cfg.link_up_s * cfg.rate_hz / episode_steps)) + 1


def robot_options(task: str, seed: int, dynamics: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A twin robot's ``[robot.options]``; ``extra``: its cameras (``RLCoConfig.robot_extra``) for a cnn policy."""
    return {"task": task, "seed": int(seed), "dynamics": dynamics, **(extra or {})}


def _loaded(blob: WeightsBlob, spec_robot: Any) -> LoadedPolicy:
    spec = spec_robot.describe().episode_spec()
    return load_policy(decode_weights(blob.data, blob.sha256, 1 << 31), state_sizes(spec), spec.action_dim, MAX_PARAMS,
                       image_fields=image_shapes(spec))


class Acting:
    """How one robot turns observations into actions, as an agent does: the mean action every tick, or, for a
    chunked (flow) policy, its deterministic chunks played by the robots' chunk executor with the
    ``[policy]`` settings the real-path robots get (``EvalConfig.robot_policy``), each request answered at
    once as on a robot. Time is the tick's (``tick / rate_hz``), so a run is reproducible."""

    def __init__(self, policy: LoadedPolicy, cfg: EvalConfig, action_dim: int):
        self.policy, self.period = policy, 1.0 / cfg.rate_hz
        table = cfg.robot_policy(policy.horizon)
        self.executor = None if table is None else ChunkExecutor(
            action_dim, table["horizon"], table["overlap"], table["blend_steps"], period_s=self.period)

    def reset(self) -> None:
        if self.executor is not None:
            self.executor.reset()

    def __call__(self, obs: Any, tick: int) -> np.ndarray:
        ex = self.executor
        if ex is None:
            return self.policy.act(obs, deterministic=True)
        now = tick * self.period
        rid = ex.request(tick, now)
        if rid is not None:
            plan = self.policy.act_chunk_batch([obs], deterministic=True)[0]
            ex.receive(rid, tick, plan[: ex.horizon], self.policy.version, tick, now)
        return ex.act(tick).action


def in_process(blob: WeightsBlob, cfg: EvalConfig, task: str, dynamics: dict[str, Any],
               progress: Callable[[int, int], None] | None = None, extra: dict[str, Any] | None = None) -> EvalResult:
    """The set on twins stepped in this process."""
    import time

    from hal_drivers.mujoco_fetch import FetchRobot
    from hal_drivers.mujoco_fetch.config import FetchConfig

    t0 = time.monotonic()
    per: dict[str, list[bool]] = {}
    done = 0
    for i, n in enumerate(shares(cfg.episodes, cfg.robots)):
        robot = FetchRobot(FetchConfig(**robot_options(task, cfg.seed + i, dynamics, extra)))
        try:
            act = Acting(_loaded(blob, robot), cfg, robot.describe().episode_spec().action_dim)
            out = per.setdefault(f"eval-{i}", [])
            for _ in range(n):
                obs = robot.reset()
                act.reset()
                tick = 0
                while True:
                    res = robot.step(act(obs, tick))
                    obs, tick = res.observation, tick + 1
                    if res.terminated or res.truncated:
                        break
                out.append(bool(res.success))
                done += 1
                if progress:
                    progress(done, cfg.episodes)
        finally:
            robot.close()
    return _result(per, "in_process", time.monotonic() - t0)


def _result(per: dict[str, list[bool]], via: str, seconds: float) -> EvalResult:
    flat = [ok for v in per.values() for ok in v]
    return EvalResult(float(np.mean(flat)) if flat else 0.0, len(flat), per, via, seconds)


def policy_episodes(table: pa.Table, version: int) -> dict[str, list[bool]]:
    """Per robot, in the order they ran, the success of each episode acted wholly by ``version``."""
    rows = table.select(["robot_id", "episode_id", "t_ns", "policy_version", "success"]).to_pylist()
    eps: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        e = eps.setdefault((r["robot_id"], r["episode_id"]), {"t": r["t_ns"], "last": -1, "ok": False, "pure": True})
        e["t"] = min(e["t"], r["t_ns"])
        e["pure"] &= r["policy_version"] == version
        if r["t_ns"] >= e["last"]:
            e["last"], e["ok"] = r["t_ns"], r["success"]
    out: dict[str, list[bool]] = {}
    for (robot, _), e in sorted(eps.items(), key=lambda kv: (kv[0][0], kv[1]["t"])):
        if e["pure"]:
            out.setdefault(robot, []).append(bool(e["ok"]))
    return out


def real_path(blob: WeightsBlob, cfg: EvalConfig, task: str, dynamics: dict[str, Any], root: Path,
              timeout: float = 900, extra: dict[str, Any] | None = None) -> EvalResult:
    """The set on edge-agents running the twin, served ``blob`` by a learner that does not train."""
    import time

    from hal_drivers.mujoco_fetch import FetchRobot
    from hal_drivers.mujoco_fetch.config import FetchConfig

    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    probe = FetchRobot(FetchConfig(**robot_options(task, cfg.seed, dynamics, extra)))
    try:
        spec = probe.describe().episode_spec()
        horizon = _loaded(blob, probe).horizon  # a policy the robots would refuse fails here, with the loader's message
    finally:
        probe.close()
    want = shares(cfg.episodes, cfg.robots)
    slack = slack_episodes(cfg)
    with realpath.learner(root, "eval-learner", policy=blob) as (url, data_dir):
        cmds = []
        for i, n in enumerate(want):
            path = realpath.agent_config(root, f"eval-{i}", url, robot_options(task, cfg.seed + i, dynamics, extra),
                                         {"max_episodes": n + slack, "deterministic": True, "seed": cfg.seed + i,
                                          "rate_hz": cfg.rate_hz}, policy=cfg.robot_policy(horizon))
            cmds.append(([sys.executable, "-m", "edge_agent", "run", "--config", str(path), "--drain-timeout", "60"],
                         path.parent / "agent.log"))
        realpath.run_agents(cmds, timeout)
    got = policy_episodes(realpath.stored_table(data_dir, spec), blob.version)
    per: dict[str, list[bool]] = {}
    for i, n in enumerate(want):
        mine = got.get(f"eval-{i}", [])
        if len(mine) < n:
            raise realpath.RealPathError(f"eval-{i} ran {len(mine)} episodes with policy version {blob.version}, "
                                         f"{n} wanted: its link took longer than eval.link_up_s = {cfg.link_up_s:g} s to bring "
                                         f"the weights (see {root / f'eval-{i}' / 'agent.log'})")
        per[f"eval-{i}"] = mine[:n]
    return _result(per, "real_path", time.monotonic() - t0)
