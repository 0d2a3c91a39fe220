"""A real multi-node Ray cluster on this machine: placement, sharded buffers,
learner sampling from both sites, weight sync to a sim worker, shard restart, and a
mixed fleet in ``groups.mode = "auto"`` (one cluster for the module: starting one is
the slow part)."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="Ray is the cluster extra: pip install 'fleetrl[cluster]'")

from cloud.cluster.channels import ShardChannel  # noqa: E402
from harness import Agent, assert_exactly_once, free_port, wait_for  # noqa: E402
from harness.ledger import stored_rows  # noqa: E402
from cloud.cluster.config import parse_cluster  # noqa: E402
from cloud.cluster.placement import PlacementError, render  # noqa: E402
from cloud.cluster.local import local_cluster  # noqa: E402
from cloud.cluster.runtime import ClusterRuntime  # noqa: E402
from shared.chunk import StepRecord, build_batch, checksum, encode_chunk  # noqa: E402
from shared.config import LearnerConfig  # noqa: E402
from shared.protocol import Chunk  # noqa: E402
from shared.weights import decode_weights  # noqa: E402



def cluster_table() -> dict:
    return {
        "nodes": [
            {"name": "train-0", "groups": ["train"], "cpus": 1, "units": [{"kind": "accelerator", "name": "gpu0"}]},
            {"name": "site-a", "groups": ["site-a", "sim"], "cpus": 1},
            {"name": "site-b", "groups": ["site-b"], "cpus": 1},
            {"name": "arm-a-1", "groups": ["robots-site-a"], "units": [{"kind": "robot", "name": "arm", "driver": "mujoco_fetch"}]},
        ],
        "placement": {
            "learner": {"group": "train", "accelerators": 1, "cpus": 0.5},
            "publisher": {"group": "train", "cpus": 0.25},
            "shards": [{"name": "site-a", "group": "site-a", "cpus": 0.25, "robot_ids": ["arm-a-*", "sim-*"]},
                       {"name": "site-b", "group": "site-b", "cpus": 0.25, "robot_ids": ["arm-b-*"]}],
            "rollout": {"group": "sim", "cpus": 0.5, "envs_per_worker": 2, "options": {"max_episode_steps": 20}},
        },
        "channel": {"max_inflight": 2},
    }


@pytest.fixture(scope="module")
def ray_cluster():
    """The config's nodes as Ray nodes on this machine: what ``serve --cluster local`` starts
    (a fresh short temp root; robot computers, which host no component, not started)."""
    with local_cluster(parse_cluster(cluster_table())) as address:
        ray.init(address=address, namespace="fleetrl", logging_level="WARNING")
        yield address


@pytest.fixture(scope="module")
def runtime(ray_cluster, tmp_path_factory):
    data = tmp_path_factory.mktemp("run")
    cfg = LearnerConfig.model_validate({
        "data_dir": str(data),
        "server": {"port": 0},
        "learner": {"learning_starts": 60, "batch_size": 32, "hidden": [32, 32], "utd_ratio": 0.2, "publish_every": 4,
                    "tensorboard": True, "tensorboard_every": 2},
    })
    rt = ClusterRuntime(cfg, parse_cluster(cluster_table()))
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture(scope="module")
def spec():
    import hal_drivers

    robot = hal_drivers.create("mujoco_fetch", {"max_episode_steps": 20})
    try:
        return robot.describe().episode_spec()
    finally:
        robot.close()


def chunk(spec, robot: str, seq: int, rows: int = 10) -> Chunk:
    obs = {k: np.full(f.shape, seq, np.float32) for k, f in spec.observation.items()}
    steps = [StepRecord(obs, np.zeros(spec.action_dim, np.float32), 0.0, obs, False, i == rows - 1, step=i)
             for i in range(rows)]
    batch = build_batch(spec, robot, f"{robot}-ep{seq}", steps)
    body = encode_chunk(batch)
    return Chunk(seq, f"{robot}-ep{seq}", rows, batch.nbytes, checksum(body), body)


def stored(stats: dict) -> list[tuple[str, int]]:
    out = []
    for p in sorted((Path(stats["data_dir"]) / "buffer" / "segments").glob("*.parquet")):
        t = pq.read_table(p, columns=["robot_id", "stream_seq"])
        out += list(zip(t.column("robot_id").to_pylist(), t.column("stream_seq").to_pylist()))
    return out


def test_components_land_on_the_nodes_the_placement_names(runtime):
    assert runtime.where() == {
        "shards.site-a": ["site-a"], "shards.site-b": ["site-b"],
        "learner": ["train-0"], "publisher": ["train-0"], "rollout": ["site-a"],
    }
    urls = runtime.endpoints()
    assert set(urls) == {"site-a", "site-b"} and all(u.startswith("ws://") for u in urls.values())


def test_unsatisfiable_placement_fails_before_any_actor_starts(ray_cluster, tmp_path):
    before = set(map(str, ray.util.list_named_actors(all_namespaces=True)))
    t = cluster_table()
    t["placement"]["learner"]["accelerators"] = 2
    with pytest.raises(PlacementError, match=r"learner needs 1 more replica\(s\) on group 'train'.*accelerator x2 \(free in group: 1\)"):
        ClusterRuntime(LearnerConfig(data_dir=tmp_path), parse_cluster(t), namespace="bad").start()
    # described in the config, but no such Ray node joined: caught on the live cluster
    t = cluster_table()
    t["nodes"].append({"name": "site-c", "groups": ["site-c"], "cpus": 1})
    t["placement"]["shards"].append({"name": "site-c", "group": "site-c", "robot_ids": ["arm-c-*"]})
    with pytest.raises(PlacementError, match=r"unsatisfiable placement \(live Ray cluster\): shards.site-c .* \[no nodes\]"):
        ClusterRuntime(LearnerConfig(data_dir=tmp_path), parse_cluster(t), namespace="bad").start()
    assert set(map(str, ray.util.list_named_actors(all_namespaces=True))) == before
    assert not (tmp_path / "shards").exists()


def test_two_robot_groups_land_in_their_own_shards_and_the_learner_samples_both(runtime, spec):
    ch = ShardChannel(runtime.cluster)
    for robot in ("arm-a-1", "arm-b-1"):
        start = ch.hello(robot, spec.to_dict(), "robot")
        for seq in range(start + 1, start + 9):
            ch.put(robot, chunk(spec, robot, seq))
    ch.flush()
    assert ch.blocked > 0  # the bounded window made the producer wait for durable acks
    summary = runtime.rollout_round()  # sim worker: weights sync, then one rollout into site-a
    assert summary[0]["robot_id"] == "sim-worker-0" and summary[0]["rows"] == 40
    a, b = ray.get([runtime.shards["site-a"].stats.remote(), runtime.shards["site-b"].stats.remote()])
    assert a["rows_by_robot"] == {"arm-a-1": 80, "sim-worker-0": 40} and a["sources"] == {"arm-a-1": "robot", "sim-worker-0": "sim"}
    assert b["rows_by_robot"] == {"arm-b-1": 80}
    assert {r for r, _ in stored(a)} == {"arm-a-1", "sim-worker-0"} and {r for r, _ in stored(b)} == {"arm-b-1"}

    learner = wait_for(lambda: (s := ray.get(runtime.learner.stats.remote()))["version"] >= 1 and s, 30,
                       "the learner to publish a version", every=0.2)
    assert learner["error"] is None
    assert learner["samples_by_shard"]["site-a"] > 0 and learner["samples_by_shard"]["site-b"] > 0
    # learner.tensorboard: the cluster learner writes under <data_dir>/tb on its node (this machine here);
    # no episodes or success rate (shards do not count them)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalar_tags() -> set[str]:
        acc = EventAccumulator(str(runtime.cfg.data_dir / "tb"))
        acc.Reload()
        return set(acc.Tags()["scalars"])

    tags = wait_for(lambda: {"loss/critic_loss", "buffer/rows", "ingest/rows_per_s"} <= (t := scalar_tags()) and t, 30,
                    "the cluster learner's TensorBoard scalars (flushed every 10 s)", every=0.5)
    assert "buffer/episodes" not in tags and "episodes/success_rate" not in tags
    # the trainer hands weights to the publisher actor without waiting: wait until it holds them
    wait_for(lambda: ray.get(runtime.publisher.version.remote()) >= 1, 30, "the publisher to hold a version", every=0.2)
    # new weights reach the sim worker in the next sync round (gloo), between rollouts
    summary = runtime.rollout_round()
    version = ray.get(runtime.publisher.version.remote())
    assert summary[0]["policy_version"] == ray.get(runtime.workers[0].stats.remote())["version"] >= 1
    assert ray.get(runtime.publisher.stats.remote())["sync"]["version"] == summary[0]["policy_version"] <= version
    # and robots at both sites get them from their shard's gateway
    wait_for(lambda: min(s["policy_version"] for s in ray.get([x.stats.remote() for x in runtime.shards.values()])) >= 1,
             30, "both shards' gateways to hold the new weights", every=0.2)


def test_killed_shard_restarts_from_its_parquet_segments_with_nothing_lost(runtime, spec):
    shard = runtime.shards["site-b"]
    before = ray.get(shard.stats.remote())
    ch = ShardChannel(runtime.cluster)
    start = ch.hello("arm-b-2", spec.to_dict(), "robot")
    for seq in range(start + 1, start + 4):
        ch.put("arm-b-2", chunk(spec, "arm-b-2", seq))
    ch.flush()
    pid = ray.get(shard.__ray_call__.remote(lambda self: __import__("os").getpid()))
    ray.kill(shard, no_restart=False)
    # calls queue while Ray restarts it on its bundle; the new process recovers from disk
    wait_for(lambda: ray.get(shard.__ray_call__.remote(lambda self: __import__("os").getpid())) != pid, 60,
             "Ray to restart the shard in a new process", every=0.2)
    after = ray.get(shard.stats.remote())
    assert after["rows"] == before["rows"] + 30
    assert after["hwm"] == {**before["hwm"], "arm-b-2": start + 3}
    assert after["recovery"]["segments"] == after["segments"] and after["recovery"]["stray_removed"] == []
    # exactly once: every stored (robot, seq) chunk holds its 10 rows, no more
    assert set(Counter(stored(after)).values()) == {10}
    # a resend after the restart is recognised; the stream continues from the mark
    assert ch.hello("arm-b-2", spec.to_dict(), "robot") == start + 3
    ch.put("arm-b-2", chunk(spec, "arm-b-2", start + 3))
    ch.put("arm-b-2", chunk(spec, "arm-b-2", start + 4))
    ch.flush()
    final = ray.get(shard.stats.remote())
    assert final["rows_by_robot"]["arm-b-2"] == 40 and final["hwm"]["arm-b-2"] == start + 4
    assert set(Counter(stored(final)).values()) == {10}


CAM = (12, 12, 3)


def camera_chunk(spec, robot: str, seq: int, rows: int = 8) -> Chunk:
    """A chunk whose frames say where they come from: every pixel of step i's frame is seq * 16 + i."""
    frames = [np.full(CAM, seq * 16 + i, np.uint8) for i in range(rows + 1)]
    steps = [StepRecord({"q": np.full(3, seq, np.float32), "cam": frames[i]}, np.zeros(2, np.float32), 0.0,
                        {"q": np.full(3, seq, np.float32), "cam": frames[i + 1]}, False, i == rows - 1, step=i)
             for i in range(rows)]
    batch = build_batch(spec, robot, f"{robot}-ep{seq}", steps)
    body = encode_chunk(batch)
    return Chunk(seq, f"{robot}-ep{seq}", rows, batch.nbytes, checksum(body), body)


def test_cameras_in_cluster_mode_shards_serve_frames_and_the_learner_trains_a_cnn(ray_cluster, tmp_path):
    from cloud.cluster.learner import ShardedBuffer
    from shared.schema import EpisodeSpec, FieldSpec
    from shared.weights import decode_weights

    t = cluster_table()
    t["placement"] = {  # beside the module's runtime: small CPU asks, no accelerator, no sim workers
        "learner": {"group": "train", "cpus": 0.1},
        "publisher": {"group": "train", "cpus": 0.05},
        "shards": [{"name": "site-a", "group": "site-a", "cpus": 0.05, "robot_ids": ["cam-a-*"]},
                   {"name": "site-b", "group": "site-b", "cpus": 0.05, "robot_ids": ["cam-b-*"]}],
    }
    cfg = LearnerConfig.model_validate({"data_dir": str(tmp_path), "server": {"port": 0}, "learner": {
        "learning_starts": 40, "batch_size": 16, "hidden": [16], "utd_ratio": 0.5, "publish_every": 2,
        "image_fields": ["cam"], "encoder_channels": [4], "encoder_latent": 8, "device": "cpu"}})
    rt = ClusterRuntime(cfg, parse_cluster(t), namespace="pixels")
    rt.start()
    try:
        spec = EpisodeSpec({"q": FieldSpec((3,)), "cam": FieldSpec(CAM, "uint8")}, action_dim=2)
        ch = ShardChannel(rt.cluster, namespace="pixels")
        for robot in ("cam-a-1", "cam-b-1"):
            start = ch.hello(robot, spec.to_dict(), "robot")
            for seq in range(start + 1, start + 7):
                ch.put(robot, camera_chunk(spec, robot, seq))
        ch.flush()
        learner = wait_for(lambda: (s := ray.get(rt.learner.stats.remote()))["version"] >= 1 and s, 60,
                           "the cluster learner to publish a camera policy", every=0.2)
        assert learner["error"] is None
        assert learner["samples_by_shard"]["site-a"] > 0 and learner["samples_by_shard"]["site-b"] > 0
        # the trainer counts a version before it hands the weights over (fire and forget): wait for the publisher
        blob = wait_for(lambda: ray.get(rt.publisher.latest.remote()), 30, "the publisher to hold them", every=0.2)
        arch = decode_weights(blob.data, blob.sha256, len(blob.data)).arch
        assert arch["actor"]["kind"] == "cnn_gaussian" and arch["actor"]["images"] == [["cam", *CAM]]

        # A batch drawn across both shards carries each row's frame and its next frame, exactly.
        buf = ShardedBuffer(["site-a", "site-b"], namespace="pixels")
        for name, shard in rt.shards.items():
            buf.update(name, ray.get(shard.memory.remote()))
        assert buf.dims is not None and buf.dims.images == (("cam", CAM),)
        batch = buf.sample(64, np.random.default_rng(0))
        obs, nxt = batch["images.cam"], batch["next_images.cam"]
        assert obs.shape == nxt.shape == (64, *CAM) and obs.dtype == np.uint8
        seq = batch["obs"][:, 0].astype(np.int64)
        assert np.array_equal(obs[:, 0, 0, 0] // 16, seq)  # the frame belongs to the row's chunk
        assert np.array_equal(nxt[:, 0, 0, 0].astype(np.int64), obs[:, 0, 0, 0].astype(np.int64) + 1)
        assert all((f == f[0, 0, 0]).all() for f in (*obs, *nxt))
    finally:
        rt.stop()


SIZES = {"arm-0": (16, 4), "pm-0": (9, 3)}  # (policy input, output) of each embodiment
DRIVERS = {"arm-0": "mujoco_fetch", "pm-0": "point_mass"}


def test_two_embodiments_on_one_shard_each_learn_in_their_own_group(ray_cluster, tmp_path: Path) -> None:
    """A Fetch arm (policy 16 -> 4) and a 3-D point mass (9 -> 3), each a real edge-agent process, linked to
    one shard. The shard keeps a buffer per embodiment group, the learner trains a policy per group, and each
    group's weights reach its own robots only: each group's rows stored exactly once in its own buffer, each
    robot acting with a policy version > 0 of its own group, never sent the other's (a robot refuses a
    wrong-shaped policy: policy_refused)."""
    t = cluster_table()
    port = free_port()  # known before the shard starts: the robots start (and spool) while the cluster places it
    t["placement"] = {  # beside the module's runtime: small CPU asks, no accelerator, no sim workers
        "learner": {"group": "train", "cpus": 0.1},
        "publisher": {"group": "train", "cpus": 0.05},
        "shards": [{"name": "site-a", "group": "site-a", "cpus": 0.05, "port": port, "robot_ids": ["*"]}],
    }
    cfg = LearnerConfig.model_validate({
        "data_dir": str(tmp_path / "run"), "server": {"port": 0, "auth": "open"}, "groups": {"mode": "auto"},
        "learner": {"learning_starts": 100, "batch_size": 32, "hidden": [32, 32], "utd_ratio": 0.5,
                    "publish_every": 5, "device": "cpu"},
        "cluster": t,
    })
    cluster = parse_cluster(cfg.cluster)
    shown = render(cluster, embodiments=cfg.groups)
    assert "embodiment groups (mode auto)" in shown and "<driver>-<spec hash>" in shown, shown
    url = f"ws://127.0.0.1:{port}/ws"
    agents = [Agent(tmp_path / "robots", "arm-0", [url], episodes=0, rate_hz=200, chunk_steps=20,
                    control={"random_steps": 0}),
              Agent(tmp_path / "robots", "pm-0", [url], episodes=0, rate_hz=200, chunk_steps=20,
                    driver="point_mass", driver_options={"dims": 3, "seed": 4}, control={"random_steps": 0})]
    rt = ClusterRuntime(cfg, cluster, namespace="groups")
    try:
        for a in agents:
            a.start()
        rt.start()
        assert rt.endpoints()["site-a"] == url
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
