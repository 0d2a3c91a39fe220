"""Demonstrations imported from MCAP (the files `cloud-learner export` writes) into a demo dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cloud.buffer.replay import ReplayBuffer
from cloud.export.episodes import BufferEpisodes
from cloud.export.mcap_export import F32_ARRAY, _f32_array, _File, export_mcap
from cloud.export.mcap_import import import_mcap
from shared.chunk import StepRecord, build_batch
from shared.errors import ConfigError
from shared.schema import EpisodeSpec, FieldSpec

pytest.importorskip("mcap_ros2", reason="MCAP import needs mcap-ros2-support (the ros2 extra)")

SPEC = EpisodeSpec(
    observation={"q": FieldSpec((3,)), "cam": FieldSpec((6, 8, 3), "uint8", codec="raw"),
                 "wrist": FieldSpec((6, 8, 1), "uint8", codec="png")},
    action_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0),
)


def _episode(rng: np.random.Generator, n: int) -> list[StepRecord]:
    def obs(k: int) -> dict[str, np.ndarray]:
        return {"q": rng.standard_normal(3).astype(np.float32), "cam": rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
                "wrist": np.full((6, 8, 1), k, np.uint8)}

    steps, o = [], obs(0)
    for i in range(n):
        nxt = obs(i + 1)
        human = i % 2 == 0
        steps.append(StepRecord(o, rng.uniform(-1, 1, 2).astype(np.float32), float(i), nxt, i == n - 1, False,
                                success=i == n - 1, intervention=human, step=i, human_reward=0.5 * human,
                                policy_action=np.zeros(2, np.float32) if human else None,
                                t_ns=1_700_000_000_000_000_000 + i * 40_000_000))
        o = nxt
    return steps


def _rows(root) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted((root / "buffer" / "segments").glob("*.parquet"))]).to_pylist()


@pytest.fixture
def exported(tmp_path):
    rng = np.random.default_rng(3)
    buf = ReplayBuffer(tmp_path / "run" / "buffer", memory_capacity=100)
    buf.check_spec(SPEC)
    buf.write([("arm-1", 1, build_batch(SPEC, "arm-1", "epA", _episode(rng, 5))),
               ("arm-1", 2, build_batch(SPEC, "arm-1", "epB", _episode(rng, 3)))])
    src = BufferEpisodes(tmp_path / "run")
    export_mcap(src.episodes(), src.spec, tmp_path / "mcap")
    return tmp_path


def test_mcap_episodes_come_back_as_demo_rows(exported):
    out = exported / "demos"
    report = import_mcap([exported / "mcap"], SPEC, out)
    assert (report.episodes, report.steps) == (2, 8)
    before = {(r["episode_id"], r["step"]): r for r in _rows(exported / "run")}
    after = _rows(out)
    assert len(after) == 8 and all(r["demo"] for r in after)
    for r in after:
        b = before[(r["episode_id"], r["step"])]
        for k in ("obs.q", "action", "reward", "terminated", "success", "intervention", "human_reward", "policy_action",
                  "obs.cam", "obs.wrist"):
            assert r[k] == b[k], k
    # the dataset is a buffer a learner opens (learner.demo_paths), frames once per step included
    again = ReplayBuffer(out / "buffer", memory_capacity=100, image_fields=["cam"])
    assert again.spec == SPEC and again.size == 8
    batch = again.sample(8, np.random.default_rng(0))
    assert (batch["demo"] == 1).all()


def test_a_file_that_does_not_fit_the_run_writes_nothing(exported):
    other = EpisodeSpec({"q": FieldSpec((4,)), "cam": SPEC.observation["cam"], "wrist": SPEC.observation["wrist"]}, 2,
                        (-1.0, -1.0), (1.0, 1.0))
    with pytest.raises(ConfigError, match="obs/q: 3 values, the run's field has 4"):
        import_mcap([exported / "mcap"], other, exported / "demos")
    assert not (exported / "demos").exists()
    assert not [p for p in exported.iterdir() if p.name.startswith(".import-")]


def test_refuses_a_non_empty_out_and_no_files(exported, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        import_mcap([exported / "mcap"], SPEC, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .mcap files"):
        import_mcap([tmp_path / "empty"], SPEC, tmp_path / "demos2")


def test_a_step_message_that_is_not_json_is_refused_naming_the_file(tmp_path):
    spec = EpisodeSpec({"q": FieldSpec((3,))}, 2, (-1.0, -1.0), (1.0, 1.0))
    from hal_drivers.ros2 import types

    f = _File(tmp_path / "in" / "bad.mcap")
    for t in (1, 2):
        f.write("/fleetrl/obs/q", F32_ARRAY, _f32_array(np.zeros(3, np.float32), "q"), t)
    f.write("/fleetrl/action", F32_ARRAY, _f32_array(np.zeros(2, np.float32), "action"), 1)
    f.write("/fleetrl/step", "std_msgs/msg/String", types.new("std_msgs/msg/String", data="{not json"), 1)
    f.close()
    with pytest.raises(ConfigError, match=r"bad.mcap: its messages are not what .*JSONDecodeError"):
        import_mcap([tmp_path / "in"], spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_episodes_of_two_robots_with_one_name_stay_two_episodes(exported):
    import shutil

    shutil.copytree(exported / "mcap" / "arm-1", exported / "mcap" / "arm-2")  # arm-2/epA.mcap beside arm-1/epA.mcap
    report = import_mcap([exported / "mcap"], SPEC, exported / "demos")
    assert (report.episodes, report.steps) == (4, 16)
    episodes = {e.episode_id: e.table.num_rows for e in BufferEpisodes(exported / "demos").episodes()}
    assert sorted(episodes.values()) == [3, 3, 5, 5], episodes


def test_the_cli_imports_and_says_how_to_use_the_dataset(exported):
    from typer.testing import CliRunner

    from cloud.cli import app

    runner = CliRunner()
    out = exported / "demos"
    res = runner.invoke(app, ["demos", "import", str(exported / "mcap"), "--like", str(exported / "run"),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "imported 2 demo episodes (8 steps)" in res.output and "learner.demo_paths" in res.output
    bad = runner.invoke(app, ["demos", "import", str(exported / "mcap"), "--like", str(exported / "nowhere"),
                              "--out", str(exported / "d2")])
    assert bad.exit_code == 2 and "no buffer manifest" in bad.output and not (exported / "d2").exists()
