"""learner.sync_robots: synchronous rounds across a fleet. The learner publishes
only once each of N robots has finished an episode since the last publish and
training has caught up; robots with ``[control] sync = true`` wait for that
policy, so the fleet moves in lockstep, one policy version per round.

First the trainer in process over a real replay buffer (which robot's episode
unlocks a publish), then a real learner and two real agents (lockstep)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from cloud.buffer import ReplayBuffer
from cloud.learner.trainer import Trainer
from harness import RobotState, admin_status, assert_exactly_once, read_ready, spawn, stop, wait_for, worker_idle
from harness.ledger import KEY_COLUMNS, stored_rows
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerAlgoConfig
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import WeightsBlob

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,))}, action_dim=4, action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
EP = 10  # rows per episode (one chunk each)


class Published(list):
    def __call__(self, blob: WeightsBlob) -> None:  # the trainer's publish callback
        self.append(blob)


def _episode(buf: ReplayBuffer, robot: str, seq: int) -> None:
    rng = np.random.default_rng(seq)
    steps = [StepRecord({"pos": rng.normal(size=3).astype(np.float32)}, rng.uniform(-1, 1, 4).astype(np.float32), -1.0,
                        {"pos": rng.normal(size=3).astype(np.float32)}, False, i == EP - 1, step=i) for i in range(EP)]
    buf.write([(robot, seq, build_batch(SPEC, robot, f"{robot}-{seq}", steps))])


def test_publishes_once_every_robot_delivered_an_episode_and_training_caught_up(tmp_path: Path, trainers) -> None:
    buf = ReplayBuffer(tmp_path / "buffer", memory_capacity=10_000)
    buf.check_spec(SPEC)
    seqs: dict[str, int] = defaultdict(int)

    def episode(robot: str) -> None:
        seqs[robot] += 1
        _episode(buf, robot, seqs[robot])

    for _ in range(3):
        episode("a")
    published = Published()
    cfg = LearnerAlgoConfig(learning_starts=20, publish_every=5, sync_robots=2, batch_size=8, hidden=[8, 8],
                            checkpoint_every=10**6, threads=1)
    t = Trainer(buf, cfg, published)
    trainers.append(t)
    t.start()
    worker_idle(t, 30)
    assert [p.version for p in published] == [1], "the initial policy at once (robots wait from then on), then " \
        "nothing: caught up, but robot b has sent nothing (nor does publish_every apply)"

    episode("b")
    t.notify_data()
    worker_idle(t, 40)
    episode("a")
    t.notify_data()
    worker_idle(t, 50)
    assert [p.version for p in published] == [1, 2], "both robots delivered and training caught up: one publish"

    episode("a")  # the same robot again does not make a round
    t.notify_data()
    worker_idle(t, 60)
    assert len(published) == 2

    episode("b")
    t.notify_data()
    worker_idle(t, 70)
    assert [p.version for p in published] == [1, 2, 3]


def test_sync_robots_is_a_documented_non_negative_count() -> None:
    assert LearnerAlgoConfig().sync_robots == 0
    with pytest.raises(ValueError, match="sync_robots"):
        LearnerAlgoConfig(sync_robots=-1)


# ---------------------------------------------------------------- real learner, real agents

ROUNDS = 8  # policy versions the learner publishes before the robots are stopped


def _agent(tmp_path: Path, i: int, url: str) -> Path:
    p = tmp_path / f"agent-{i}.toml"
    p.write_text(tomli_w.dumps({
        "robot_id": f"robot-{i}",
        "link": {"url": url, "allow_unauthenticated": True},
        "robot": {"driver": "mujoco_fetch", "options": {"seed": i}},
        "control": {"rate_hz": 50, "max_episodes": 0, "chunk_steps": 50, "sync": True, "sync_timeout_s": 60,
                    "seed": i},
        "spool": {"dir": f"agent-{i}/spool"},
        "state_dir": f"agent-{i}/state",
    }))
    return p


def test_two_synchronous_robots_act_in_lockstep_one_policy_version_per_round(tmp_path: Path) -> None:
    cfg = tmp_path / "learner.toml"
    cfg.write_text(tomli_w.dumps({
        "data_dir": "learner", "server": {"port": 0, "auth": "open"},
        "learner": {"learning_starts": 50, "sync_robots": 2, "batch_size": 32, "hidden": [32, 32], "threads": 1},
    }))
    log = tmp_path / "learner.log"
    learner = spawn([sys.executable, "-m", "cloud", "serve", "--config", str(cfg)], log, stdout=subprocess.PIPE)
    agents = []
    try:
        url = read_ready(learner, log)
        agents = [spawn([sys.executable, "-m", "edge_agent", "run", "--config", str(_agent(tmp_path, i, url))],
                        tmp_path / f"agent-{i}.log") for i in range(2)]
        wait_for(lambda: admin_status(tmp_path / "learner")["policy_version"] >= ROUNDS, 180, f"{ROUNDS} rounds")
        for i, a in enumerate(agents):  # a robot stopped mid-round: the other may wait for it in vain, as it should
            assert stop(a, timeout=60) == 0, (tmp_path / f"agent-{i}.log").read_text()[-3000:]
    finally:
        for a in agents:
            stop(a)
        assert stop(learner, timeout=30) == 0, log.read_text()[-3000:]

    data_dir = tmp_path / "learner"
    assert_exactly_once(data_dir, [RobotState(f"robot-{i}", tmp_path / f"agent-{i}" / "state") for i in range(2)])
    _, rows = stored_rows(data_dir, [*KEY_COLUMNS, "policy_version"])
    versions: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in rows:
        versions[(r["robot_id"], r["episode_id"])].add(r["policy_version"])
    # Before the first policy the robots run free, and the first rounds can swap a policy mid-episode; from
    # then on each round is one version, and each robot acts exactly one episode with it.
    per_robot: dict[str, list[int]] = defaultdict(list)
    for (rid, _), vs in versions.items():
        if len(vs) == 1 and min(vs) >= 2:
            per_robot[rid].append(min(vs))
    a, b = (sorted(per_robot[f"robot-{i}"]) for i in range(2))
    print(f"robot-0 {a}\nrobot-1 {b}")
    common = sorted(set(a) & set(b))
    assert len(common) >= 3, (a, b)
    for mine in (a, b):
        span = [v for v in mine if v >= common[0]]
        assert span == list(range(common[0], common[0] + len(span))), f"a version skipped or repeated: {mine}"
    assert common == list(range(common[0], common[-1] + 1)), "both robots acted with every version of the rounds"
