"""A mixed fleet in cluster mode: a Fetch arm (policy 16 -> 4) and a 3-D point mass (9 -> 3), each a
real edge-agent process, linked to one shard of a real Ray local cluster in ``groups.mode = "auto"``.
The shard keeps a buffer per embodiment group, the learner trains a policy per group, and each
group's weights reach its own robots only: each group's rows stored exactly once in its own buffer,
each robot acting with a policy version > 0 of its own group, never sent the other's (a robot
refuses a wrong-shaped policy: policy_refused)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is the cluster extra: pip install 'fleetrl[cluster]'")

from cloud.cluster.config import parse_cluster  # noqa: E402
from cloud.cluster.local import local_cluster  # noqa: E402
from cloud.cluster.placement import render  # noqa: E402
from cloud.cluster.runtime import ClusterRuntime  # noqa: E402
from harness import Agent, assert_exactly_once, wait_for  # noqa: E402
from harness.ledger import stored_rows  # noqa: E402
from shared.config import LearnerConfig  # noqa: E402
from shared.weights import decode_weights  # noqa: E402

SIZES = {"arm-0": (16, 4), "pm-0": (9, 3)}  # (policy input, output) of each embodiment
DRIVERS = {"arm-0": "mujoco_fetch", "pm-0": "point_mass"}

CLUSTER = {
    "nodes": [
        {"name": "train-0", "groups": ["train"], "cpus": 1},
        {"name": "site-a", "groups": ["site-a"], "cpus": 1},
    ],
    "placement": {
        "learner": {"group": "train", "cpus": 0.5},
        "publisher": {"group": "train", "cpus": 0.25},
        "shards": [{"name": "site-a", "group": "site-a", "cpus": 0.25, "robot_ids": ["*"]}],
    },
}


def test_two_embodiments_on_one_shard_each_learn_in_their_own_group(tmp_path: Path) -> None:
    cfg = LearnerConfig.model_validate({
        "data_dir": str(tmp_path / "run"), "server": {"port": 0, "auth": "open"}, "groups": {"mode": "auto"},
        "learner": {"learning_starts": 100, "batch_size": 32, "hidden": [32, 32], "utd_ratio": 0.5,
                    "publish_every": 5, "device": "cpu"},
        "cluster": CLUSTER,
    })
    cluster = parse_cluster(cfg.cluster)
    shown = render(cluster, embodiments=cfg.groups)
    assert "embodiment groups (mode auto)" in shown and "<driver>-<spec hash>" in shown, shown
    agents: list[Agent] = []
    with local_cluster(cluster) as address:
        ray.init(address=address, namespace="fleetrl", logging_level="WARNING")
        rt = ClusterRuntime(cfg, cluster)
        rt.start()
        try:
            url = rt.endpoints()["site-a"]
            agents = [Agent(tmp_path / "robots", "arm-0", [url], episodes=0, rate_hz=200, chunk_steps=20,
                            control={"random_steps": 0}),
                      Agent(tmp_path / "robots", "pm-0", [url], episodes=0, rate_hz=200, chunk_steps=20,
                            driver="point_mass", driver_options={"dims": 3, "seed": 4}, control={"random_steps": 0})]
            for a in agents:
                a.start()
            wait_for(lambda: all(a.status().get("policy_version", 0) > 0 or a.proc.poll() is not None for a in agents),
                     120, "both robots acting with a policy of their own group")
            for a in agents:
                assert a.proc is not None and a.proc.poll() is None, a.log.read_text()[-3000:]
                a.proc.send_signal(signal.SIGTERM)  # stop: each drains its spool to the shard, then exits
            for a in agents:
                assert a.wait(120) == 0, a.log.read_text()[-3000:]
            groups = rt.groups()
            shard = ray.get(rt.shards["site-a"].stats.remote())
            blobs = {name: ray.get(rt.publisher.latest.remote(name)) for name in groups}
        finally:
            for a in agents:
                if a.proc is not None and a.proc.poll() is None:
                    a.kill()
            rt.stop()

    assert len(groups) == 2, groups
    by_robot = {g["robots"][0]: name for name, g in groups.items()}
    assert sorted(len(g["robots"]) for g in groups.values()) == [1, 1] and set(by_robot) == set(SIZES), groups
    for a in agents:
        name = by_robot[a.robot_id]
        assert name.startswith(DRIVERS[a.robot_id] + "-") and groups[name]["shards"] == ["site-a"]
        assert groups[name]["policy_version"] > 0 and groups[name]["updates"] > 0, groups
        root = Path(shard["groups"][name]["data_dir"])
        totals = assert_exactly_once(root, [a])  # its rows, once, in its own group's buffer; nobody else's
        assert totals[a.robot_id]["stored"] == totals[a.robot_id]["generated"] > 0
        _, rows = stored_rows(root, ["robot_id", "policy_version"])
        assert {r["robot_id"] for r in rows} == {a.robot_id}
        assert max(r["policy_version"] for r in rows) > 0, "it acted with a policy of its own group"
        assert max(a.ledger()["policy_versions_used"]) > 0
        arch = decode_weights(blobs[name].data, blobs[name].sha256, len(blobs[name].data)).arch
        assert (arch["actor"]["obs_dim"], arch["actor"]["act_dim"]) == SIZES[a.robot_id]  # each group its own policy
        log = a.log.read_text()
        assert "event=policy_refused" not in log, log[-3000:]  # never sent the other group's weights
        assert "event=policy_swapped" in log
    assert shard["groups"][by_robot["arm-0"]]["data_dir"] != shard["groups"][by_robot["pm-0"]]["data_dir"]
