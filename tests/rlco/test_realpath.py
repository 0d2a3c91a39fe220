"""D_real recorded through the real path, and a stage's policy evaluated on edge-agents running the twin."""

import json

import pytest
import tomli_w

from cloud.rlco.evaluate import in_process, policy_episodes, real_path, shares
from cloud.rlco.stages import Recipe
from cloud.rlco.cli import load_config
import pyarrow as pa


def test_shares_split_the_set_evenly():
    assert shares(5, 2) == [3, 2] and shares(2, 4) == [1, 1] and sum(shares(20, 3)) == 20


def test_policy_episodes_skip_those_not_wholly_acted_by_the_version():
    t = pa.table({"robot_id": ["r"] * 6, "episode_id": ["a", "a", "b", "b", "c", "c"], "t_ns": [1, 2, 3, 4, 5, 6],
                  "policy_version": [0, 2, 2, 2, 2, 2], "success": [False, True, False, False, False, True]})
    assert policy_episodes(t, 2) == {"r": [False, True]}


def test_real_path_records_demos_and_evaluates_like_in_process(tmp_path):
    cfg_path = tmp_path / "rlco.toml"
    cfg_path.write_text(tomli_w.dumps({
        "run_dir": "run", "threads": 1,
        "datasets": {"dir": "datasets", "sim_episodes": 2, "real_episodes": 2, "real_via": "real_path",
                     "success_only": False},
        "sft": {"updates": 50, "hidden": [32, 32]},
        "eval": {"episodes": 3, "robots": 2, "via": "real_path", "after": ["sft"]},
    }))
    cfg = load_config(cfg_path)
    recipe = Recipe(cfg)
    summary = recipe.run(stage="sft")
    real = json.loads((tmp_path / "datasets" / summary["datasets"]["real"].rsplit("/", 1)[1] / "manifest.json")
                      .read_text())
    assert real["recorded"] == 2 and real["settings"]["via"] == "real_path" and real["rows"] == 100
    # the recording learner stored them as demonstrations of the twin (its description carries the dynamics)
    assert (tmp_path / "run" / "record-real" / "demo-learner" / "buffer").is_dir()
    res = real_path(recipe.blob("sft"), cfg.eval, cfg.task, cfg.real.model_dump(mode="json"), tmp_path / "eval")
    assert res.via == "real_path" and res.episodes == 3 and sorted(res.per_robot) == ["eval-0", "eval-1"]
    assert [len(v) for v in res.per_robot.values()] == [2, 1]
    here = in_process(recipe.blob("sft"), cfg.eval, cfg.task, cfg.real.model_dump(mode="json"))
    assert here.episodes == 3 and 0.0 <= here.success <= 1.0
    assert _chunk_indices(tmp_path / "eval" / "eval-learner", 1) == {None}  # one action per inference

    # a flow Stage I (same datasets, reused) on the robots: they load a `flow` policy and play its chunks
    flow_cfg = cfg.model_copy(update={
        "run_dir": tmp_path / "flow-run", "sft": cfg.sft.model_copy(update={"policy": "flow", "flow_horizon": 4}),
        "eval": cfg.eval.model_copy(update={"episodes": 1, "robots": 1, "chunk_overlap": 2})})
    flow = Recipe(flow_cfg)
    assert flow.run(stage="sft")["datasets"] == summary["datasets"]
    res = real_path(flow.blob("sft"), flow_cfg.eval, cfg.task, cfg.real.model_dump(mode="json"), tmp_path / "eval-flow")
    assert res.via == "real_path" and res.episodes == 1
    # horizon 4, overlap 2: each chunk's first two actions ran, then the robot replanned
    assert _chunk_indices(tmp_path / "eval-flow" / "eval-learner", 1) == {0, 1}

    # a cnn_flow Stage I (camera datasets stepped in process): robots rendering the same camera load the
    # `cnn_flow` weights and play its chunks from their frames
    cam = {"name": "overhead", "view": "external_camera_0", "size": 16}
    cnn_cfg = flow_cfg.model_validate({
        **flow_cfg.model_dump(mode="json"), "run_dir": str(tmp_path / "cnn-flow-run"), "cameras": [cam],
        "datasets": {**flow_cfg.datasets.model_dump(mode="json"), "real_via": "in_process"},
        "sft": {**flow_cfg.sft.model_dump(mode="json"), "policy": "cnn_flow", "cnn_channels": [4, 4], "cnn_latent": 8}})
    cnn = Recipe(cnn_cfg)
    cnn.run(stage="sft")
    res = real_path(cnn.blob("sft"), cnn_cfg.eval, cfg.task, cfg.real.model_dump(mode="json"), tmp_path / "eval-cnn",
                    extra=cnn_cfg.robot_extra())
    assert res.via == "real_path" and res.episodes == 1
    assert _chunk_indices(tmp_path / "eval-cnn" / "eval-learner", 1) == {0, 1}


def _chunk_indices(data_dir, version):
    """The chunk_index of every stored step the policy of ``version`` acted (not the slack before it arrived)."""
    import pyarrow.parquet as pq

    from cloud.buffer.storage import read_manifest, segment_path

    m = read_manifest(data_dir / "buffer")
    rows = [r for s in m.segments for r in pq.read_table(segment_path(data_dir / "buffer", s),
                                                          columns=["chunk_index", "policy_version"]).to_pylist()]
    return {r["chunk_index"] for r in rows if r["policy_version"] == version}


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
