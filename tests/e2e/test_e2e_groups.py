"""A mixed fleet through one learner: a Fetch arm (observation 10/3/3, action 4) and a 3-D point
mass (3/3/3, action 3), each a real edge-agent process, linked to one real learner process in
``groups.mode = "auto"``. Each embodiment gets its own group: its rows stored exactly once in its
own buffer, its own policy of its own sizes, and no robot is ever sent the other group's weights
(a wrong-shaped policy would be refused by the robot: policy_refused). A restart with --resume
re-opens both groups."""

from __future__ import annotations

from pathlib import Path

from harness import assert_exactly_once
from harness.ledger import KEY_COLUMNS, stored_rows
from harness.procs import Agent, Learner
from harness.waits import wait_for

# The point mass steps far faster than the arm starts (MuJoCo, a Fetch model): it gets more episodes so that
# it is still acting when its group's first policy comes, also on a loaded machine.
EPISODES = {"arm-0": 12, "pm-0": 36}
SIZES = {"arm-0": (16, 4), "pm-0": (9, 3)}  # (policy input, output) of each embodiment


def test_two_embodiments_learn_in_their_own_groups(tmp_path: Path) -> None:
    learner = Learner(tmp_path, learner={"learning_starts": 100, "publish_every": 10}, groups={"mode": "auto"}).start()
    try:
        agents = [
            Agent(tmp_path, "arm-0", [learner.url], episodes=EPISODES["arm-0"], rate_hz=100, chunk_steps=20,
                  control={"random_steps": 0}),
            Agent(tmp_path, "pm-0", [learner.url], episodes=EPISODES["pm-0"], rate_hz=100, chunk_steps=20,
                  driver="point_mass", driver_options={"dims": 3, "seed": 4}, control={"random_steps": 0}),
        ]
        for a in agents:
            a.start()
        for a in agents:
            assert a.wait(120) == 0, a.log.read_text()[-3000:]
        groups = learner.status()["groups"]
        assert len(groups) == 2, groups
        by_robot = {rid: name for name, g in groups.items() for rid in _robots_of(learner, name)}
        assert set(by_robot) == {"arm-0", "pm-0"} and by_robot["arm-0"] != by_robot["pm-0"], groups
        assert by_robot["arm-0"].startswith("mujoco_fetch-") and by_robot["pm-0"].startswith("point_mass-")
        for a in agents:
            root = Path(groups[by_robot[a.robot_id]]["data_dir"])
            others = [b for b in agents if b is not a]
            totals = assert_exactly_once(root, [a])  # its rows, once, in its own group's buffer; nobody else's
            assert totals[a.robot_id]["stored"] == totals[a.robot_id]["generated"] > 0
            _, rows = stored_rows(root, [*KEY_COLUMNS, "policy_version"])
            assert not {r["robot_id"] for r in rows} & {b.robot_id for b in others}
            ledger = a.ledger()
            assert ledger["episodes"] == EPISODES[a.robot_id] and max(ledger["policy_versions_used"]) > 0, ledger
            assert max(r["policy_version"] for r in rows) > 0, "it acted with a policy of its own group"
            policy = learner.policy(30, root=root)
            assert policy.version > 0
            assert (policy.arch["actor"]["obs_dim"], policy.arch["actor"]["act_dim"]) == SIZES[a.robot_id]
            log = a.log.read_text()
            assert "event=policy_refused" not in log, log[-3000:]  # never a policy of the other embodiment
            assert "event=policy_swapped" in log
        learner_log = learner.log.read_text()
        for name in groups:
            assert f"group={name}" in learner_log and "event=policy_published" in learner_log
        learner.stop()  # --resume re-opens every group: its buffer, its policy, its checkpoint
        assert all((Path(g["data_dir"]) / "checkpoints" / "learner.safetensors").exists() for g in groups.values())
        learner.start(resume=True)
        again = wait_for(lambda: (s := learner.status()["groups"]) and all(g["updates"] for g in s.values()) and s,
                         30, "both trainers resumed from their checkpoints")
        assert set(again) == set(groups)
        for name, g in groups.items():
            assert again[name]["buffer_rows"] == g["buffer_rows"] and again[name]["spec"] == g["spec"]
            assert again[name]["policy_version"] >= g["policy_version"] > 0 and again[name]["updates"] >= g["updates"] > 0
    finally:
        learner.stop()


def _robots_of(learner: Learner, group: str) -> list[str]:
    """Robots whose rows are in a group (from /status: its linked robots have gone by now)."""
    s = learner.status()
    root = Path(s["groups"][group]["data_dir"])
    _, rows = stored_rows(root, ["robot_id"])
    return sorted({r["robot_id"] for r in rows})
