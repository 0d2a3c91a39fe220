"""Cluster config, placement checks and the `cluster show` table: pure logic, no Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cloud.cluster.cli import app as _cluster_app
from cloud.cluster.config import parse_cluster
from cloud.cluster.placement import PlacementError, bundle, check, check_live, node_resources
from hal_drivers.base import UnitDescription, UnitKind
from shared.errors import ConfigError
from shared.schema import FieldSpec


cluster_cli = typer.Typer()
cluster_cli.add_typer(_cluster_app, name="cluster")  # as cloud/cli.py registers it


def cluster_table(**over) -> dict:
    t = {
        "nodes": [
            {"name": "train-0", "groups": ["train"], "cpus": 4,
             "units": [{"kind": "accelerator", "name": "gpu0", "model": "H100", "memory_gb": 80, "sm_count": 132}]},
            {"name": "sim-0", "groups": ["sim"], "cpus": 4},
            {"name": "edge-a", "groups": ["site-a"], "cpus": 2},
            {"name": "arm-a-1", "groups": ["robots-site-a"], "cpus": 1,
             "units": [{"kind": "robot", "name": "arm", "driver": "mujoco_fetch", "spaces": {"observation": [10], "action": [4]}},
                       {"kind": "camera", "name": "wrist"}]},
        ],
        "placement": {
            "learner": {"group": "train", "accelerators": 1, "cpus": 1, "min_accelerator_memory_gb": 40},
            "publisher": {"group": "train", "cpus": 0.5},
            "shards": [{"name": "site-a", "group": "site-a", "robot_ids": ["arm-a-*", "sim-*"]}],
            "rollout": {"group": "sim", "replicas": 3, "cpus": 1, "envs_per_worker": 2},
        },
    }
    t.update(over)
    return t


def test_valid_placement_plans_every_replica_on_its_group():
    cfg = parse_cluster(cluster_table())
    plan = check(cfg)
    assert plan.nodes == {"shards.site-a": ["edge-a"], "learner": ["train-0"], "publisher": ["train-0"],
                          "rollout": ["sim-0", "sim-0", "sim-0"]}
    assert cfg.shard_for("arm-a-7") == "site-a" and cfg.shard_for("sim-worker-2") == "site-a"
    with pytest.raises(ConfigError, match="no shard serves robot 'arm-b-1'"):
        cfg.shard_for("arm-b-1")


def test_unsatisfiable_placement_names_the_missing_units():
    t = cluster_table()
    t["placement"]["learner"]["accelerators"] = 2
    t["placement"]["rollout"]["replicas"] = 6  # 4 cpus on sim-0, 1 each
    with pytest.raises(PlacementError) as e:
        check(parse_cluster(t))
    msg = e.value.message
    assert "\n" not in msg
    assert "learner needs 1 more replica(s) on group 'train' [train-0]; each needs" in msg
    assert "accelerator x2 (free in group: 1)" in msg
    assert "rollout needs 2 more replica(s) on group 'sim'" in msg and "cpu x1 (free in group: 0)" in msg


def test_accelerator_memory_is_checked():
    t = cluster_table()
    t["placement"]["learner"]["min_accelerator_memory_gb"] = 100
    with pytest.raises(PlacementError, match=r"learner needs accelerators with >= 100 GB; node train-0 has \['80 GB'\]"):
        check(parse_cluster(t))


def test_live_check_uses_the_ray_nodes_resources():
    cfg = parse_cluster(cluster_table())
    live = []
    for n in cfg.nodes:
        r = node_resources(n)
        live.append({"NodeID": n.name * 3, "Alive": n.name != "sim-0",
                     "Resources": {"CPU": r["num_cpus"], "GPU": r["num_gpus"], **r["resources"]}})
    with pytest.raises(PlacementError, match=r"live Ray cluster.*rollout needs 3 more replica\(s\) on group 'sim' \[no nodes\]"):
        check_live(cfg, live)
    live[1]["Alive"] = True
    assert check_live(cfg, live).nodes["learner"] == ["train-0"]


@pytest.mark.parametrize(("path", "value", "expect"), [
    (("nodes", 0, "cpus"), -1, "cluster.nodes.0.cpus: Input should be greater than or equal to 0"),
    (("nodes", 0, "gpus"), 1, "cluster.nodes.0.gpus: unknown key"),
    (("placement", "learner", "group"), "gpu-farm", "placement.learner.group: no node is in group 'gpu-farm'"),
    (("nodes", 3, "units", 0, "driver"), None, "robot unit 'arm' needs a driver"),
])
def test_bad_config_errors_name_the_key(path, value, expect):
    t = cluster_table()
    d = t
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value
    with pytest.raises(ConfigError) as e:
        parse_cluster(t)
    assert expect in e.value.message


def test_weight_sync_cta_bounds_are_validated():
    with pytest.raises(ConfigError, match=r"cluster.weight_sync: min_ctas \(4\) must be <= max_ctas \(2\)"):
        parse_cluster(cluster_table(weight_sync={"max_ctas": 2, "min_ctas": 4}))
    assert parse_cluster(cluster_table()).weight_sync.max_ctas == 2  # small by default


def test_units_become_ray_resources_and_bundles():
    cfg = parse_cluster(cluster_table())
    arm = node_resources(cfg.nodes[3])
    assert arm["resources"] == {"fleetrl.node.arm-a-1": 1, "fleetrl.group.robots-site-a": 1000,
                                "fleetrl.robot": 1, "fleetrl.camera": 1}
    assert node_resources(cfg.nodes[0])["num_gpus"] == 1
    assert bundle(cfg.placement.learner) == {"fleetrl.group.train": 1, "CPU": 1.0, "GPU": 1.0}


def test_units_from_a_live_driver_description():
    from cloud.cluster.config import UnitConfig

    d = UnitDescription("arm", UnitKind.ROBOT, "mujoco_fetch", "sn-1", observation={"q": FieldSpec((7,))}, action_shape=(4,))
    u = UnitConfig.from_description(d)
    assert (u.kind, u.driver, u.spaces) == ("robot", "mujoco_fetch", {"q": [7], "action": [4]})


def test_show_prints_units_groups_and_placement(tmp_path: Path):
    import tomli_w

    cfg = tmp_path / "run.toml"
    cfg.write_bytes(tomli_w.dumps({"data_dir": "run", "cluster": cluster_table()}).encode())
    res = CliRunner().invoke(cluster_cli, ["cluster", "show", "-c", str(cfg), "--ray-start"])
    assert res.exit_code == 0, res.output
    out = res.output
    for needle in ("units", "groups", "placement", "H100 80 GB 132 SMs", "mujoco_fetch observation(10,) action(4,)",
                   "robots-site-a", "placement: OK", "--resources='{\"fleetrl.node.train-0\": 1"):
        assert needle in out, needle
    assert re.search(r"rollout\s*│\s*sim\s*│\s*3\s*│\s*cpu 1\s*│\s*sim-0, sim-0, sim-0", out)

    bad = cluster_table()
    bad["placement"]["learner"]["accelerators"] = 3
    cfg.write_bytes(tomli_w.dumps({"data_dir": "run", "cluster": bad}).encode())
    res = CliRunner().invoke(cluster_cli, ["cluster", "show", "-c", str(cfg)])
    assert res.exit_code == 2
    assert "placement: ERROR: unsatisfiable placement (config): learner needs 1 more replica(s)" in res.output.replace("\n", " ")

    cfg.write_text('data_dir = "run"\n')
    res = CliRunner().invoke(cluster_cli, ["cluster", "show", "-c", str(cfg)])
    assert res.exit_code == 2 and "no [cluster] table" in res.output
