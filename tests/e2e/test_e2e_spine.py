"""The whole loop, real at every hop: a learner process, two edge-agent
processes, real websockets on loopback, real Parquet on disk.

The agents run until each has finished EPISODES episodes and one more after a
learned policy reached it (not a fixed number of episodes: on a loaded machine
the learner's first policy can come late), then drain on SIGTERM. Ends by
counting: every transition each agent generated is stored exactly once, and
each agent received and acted with a policy version > 0.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from harness import RobotState, assert_exactly_once, read_ready, spawn, stop, wait_for
from harness.ledger import KEY_COLUMNS, read_ledger, stored_rows

EPISODES = 12  # at least, each


@pytest.fixture
def learner(tmp_path: Path):
    """Written as an operator would: paths relative to the config file."""
    cfg = tmp_path / "learner.toml"
    cfg.write_text(tomli_w.dumps({
        "data_dir": "learner",
        "server": {"port": 0, "auth": "open"},  # unenrolled robots on a loopback learner: opted in on both sides
        "learner": {"learning_starts": 100, "publish_every": 10, "batch_size": 64, "hidden": [64, 64]},
    }))
    log = tmp_path / "learner.log"
    proc = spawn([sys.executable, "-m", "cloud", "serve", "--config", str(cfg)], log, stdout=subprocess.PIPE)
    yield read_ready(proc, log), tmp_path / "learner"
    assert stop(proc, timeout=30) == 0, log.read_text()[-3000:]


def _agent_config(tmp_path: Path, i: int, url: str) -> Path:
    p = tmp_path / f"agent-{i}.toml"
    p.write_text(tomli_w.dumps({
        "robot_id": f"robot-{i}",
        "link": {"url": url, "allow_unauthenticated": True},
        "robot": {"driver": "mujoco_fetch", "options": {"seed": i}},
        "control": {"rate_hz": 100, "max_episodes": 0, "chunk_steps": 20, "random_steps": 0, "seed": i},
        "spool": {"dir": f"agent-{i}/spool"},
        "state_dir": f"agent-{i}/state",
    }))
    return p


def test_two_agents_learn_through_the_whole_loop(tmp_path: Path, learner) -> None:
    url, data_dir = learner
    agents = [
        spawn([sys.executable, "-m", "edge_agent", "run", "--config", str(_agent_config(tmp_path, i, url))],
              tmp_path / f"agent-{i}.log")
        for i in range(2)
    ]
    robots = [RobotState(f"robot-{i}", tmp_path / f"agent-{i}" / "state") for i in range(2)]
    since: dict[int, int] = {}  # robot -> episodes it had finished when its status first showed a learned policy

    def learned(i: int) -> bool:
        assert agents[i].poll() is None, (tmp_path / f"agent-{i}.log").read_text()[-3000:]
        state = robots[i].state_dir
        if not (state / "ledger.json").exists() or not (state / "status.json").exists():
            return False
        episodes = read_ledger(state)["episodes"]
        if i not in since and json.loads((state / "status.json").read_text()).get("policy_version", 0) > 0:
            since[i] = episodes
        return i in since and episodes > since[i] and episodes >= EPISODES

    wait_for(lambda: all([learned(0), learned(1)]), 300, f"both robots to finish {EPISODES} episodes and one with a "
             "learned policy")
    for a in agents:
        a.send_signal(signal.SIGTERM)  # drain: the episode is cut, the spool flushed, acks awaited
    for i, a in enumerate(agents):
        assert a.wait(120) == 0, (tmp_path / f"agent-{i}.log").read_text()[-3000:]

    totals = assert_exactly_once(data_dir, robots)  # stored once each, seqs whole, marks at the end
    assert all(t["stored"] == t["generated"] for t in totals.values()), "nothing lost on a clean run"
    _, rows = stored_rows(data_dir, [*KEY_COLUMNS, "policy_version"])
    for i, robot in enumerate(robots):
        rid = robot.robot_id
        ledger = read_ledger(robot.state_dir)
        mine = [r for r in rows if r["robot_id"] == rid]
        print(f"{rid}: episodes={ledger['episodes']} versions={ledger['policy_versions_used'][:5]}...")
        assert ledger["episodes"] >= EPISODES
        assert len({(r["episode_id"], r["step"]) for r in mine}) == len(mine), "no (episode, step) stored twice"
        steps: dict[str, list[int]] = {}
        for r in mine:
            steps.setdefault(r["episode_id"], []).append(r["step"])
        assert all(sorted(s) == list(range(len(s))) for s in steps.values()), "every episode whole from step 0"
        lengths = [len(s) for s in steps.values()]
        assert sum(n == 50 for n in lengths) >= EPISODES  # FetchReach: 50-step episodes
        assert max(lengths) == 50 and sum(n < 50 for n in lengths) <= 1  # only the drain cuts one short
        assert ledger["policy_versions_used"] and ledger["policy_versions_used"][0] > 0
        assert max(r["policy_version"] for r in mine) > 0, "the agent acted with a learned policy"
        # Acked data is gone from the robot: its spool holds no segment.
        assert not list((tmp_path / f"agent-{i}" / "spool").glob("*.seg"))
