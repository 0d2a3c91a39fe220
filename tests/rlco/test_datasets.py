"""Versioned demonstration datasets: round trip, reuse, new versions, corrupted files refused."""

import json

import numpy as np
import pyarrow as pa
import pytest

from cloud.rlco.datasets import expert_table, get_or_make, open_version, successful_episodes, write_version
from hal_drivers.mujoco_fetch import FetchRobot
from hal_drivers.mujoco_fetch.config import FetchConfig
from hal_drivers.teleop.scripted import reach_action
from shared.config import validate
from cloud.rlco.config import RLCoConfig
from shared.errors import ConfigError, StorageError

FIELDS = ("observation", "achieved_goal", "desired_goal")


def _make(episodes=2, seed=0):
    def make():
        robot = FetchRobot(FetchConfig(task="reach", seed=seed, max_episode_steps=10))
        try:
            return expert_table(robot, reach_action, episodes, 0.1, seed, False, "sim-expert")
        finally:
            robot.close()
    return make


def _never():
    raise AssertionError("a dataset on disk with these settings must be reused, not made again")


def test_round_trip_keeps_rows_in_the_buffer_schema(tmp_path):
    ds, made = get_or_make(tmp_path, "d_sim", {"episodes": 2}, _make())
    assert made and ds.manifest["rows"] == 20 and ds.manifest["episodes"] == 2
    robot = FetchRobot(FetchConfig(task="reach", seed=0))
    spec = robot.describe().episode_spec()
    robot.close()
    t = ds.table()
    assert t.schema.names == spec.arrow_schema().names and t.num_rows == 20
    assert all(t.column("demo").to_pylist()) and not any(t.column("intervention").to_pylist())
    again = open_version(ds.path)
    d = again.demos(FIELDS)
    assert d.obs.shape == (20, 10 + 3 + 3) and d.action.shape == (20, 4)
    assert np.all(np.abs(d.action) <= 1.0)
    # the first observation is what the robot saw: its desired_goal columns equal the table's
    assert d.obs[0, -3:] == pytest.approx(np.asarray(t.column("obs.desired_goal")[0].as_py()))


def test_same_settings_reuse_and_a_changed_setting_makes_a_new_version(tmp_path):
    first, _ = get_or_make(tmp_path, "d_sim", {"episodes": 2, "noise": 0.1}, _make())
    before = first.rows_path.read_bytes()
    reused, made = get_or_make(tmp_path, "d_sim", {"episodes": 2, "noise": 0.1}, _never)
    assert not made and reused.path == first.path
    other, made = get_or_make(tmp_path, "d_sim", {"episodes": 2, "noise": 0.2}, _make(seed=1))
    assert made and other.path != first.path
    assert first.rows_path.read_bytes() == before  # never overwritten
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["d_sim", "d_sim"]


def test_a_corrupted_file_is_refused_not_regenerated(tmp_path):
    ds, _ = get_or_make(tmp_path, "d_real", {"episodes": 2}, _make())
    raw = bytearray(ds.rows_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ds.rows_path.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="rows.parquet: content hash .* does not match the manifest"):
        get_or_make(tmp_path, "d_real", {"episodes": 2}, _never)
    assert ds.rows_path.read_bytes() == bytes(raw)  # left for a person to look at
    (ds.path / "manifest.json").write_text("{not json")
    with pytest.raises(StorageError, match="manifest.json: not valid JSON"):
        open_version(ds.path)


def test_nothing_is_written_for_an_empty_dataset(tmp_path):
    spec_table = pa.table({"episode_id": pa.array([], pa.string())})
    with pytest.raises(StorageError, match="no rows"):
        write_version(tmp_path / "d_real-x", "d_real", {}, spec_table, {})
    assert list(tmp_path.iterdir()) == []


def test_successful_episodes_keeps_whole_episodes_that_ended_in_success():
    t = pa.table({"episode_id": ["a", "a", "b", "b"], "step": [0, 1, 1, 0], "success": [False, True, False, True]})
    assert successful_episodes(t).column("episode_id").to_pylist() == ["a", "a"]


@pytest.mark.parametrize("table,key", [({"sft": {"alpha": 1.5}}, "sft.alpha"), ({"rl": {"beta": -1}}, "rl.beta"),
                                       ({"rl": {"algorithm": "dqn"}}, "rl.algorithm"),
                                       ({"eval": {"via": "ssh"}}, "eval.via"), ({"real": {"gain": 1}}, "real.gain"),
                                       ({"task": "reach"}, "real.object_mass_scale")])
def test_config_errors_name_the_bad_field(table, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(RLCoConfig, json.loads(json.dumps(table)), "rlco.toml")

