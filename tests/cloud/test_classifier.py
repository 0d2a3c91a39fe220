"""The success classifier (reward = "classifier", HIL-SERL) on real MuJoCo frames.

One Fetch reach arm films the workspace from above (64x64, as the pixel demo's
``overhead`` camera); a proportional controller drives the gripper to the goal
(success frames) and random actions give failures; labels are the env's
``is_success``. The classifier is trained once per module and then saved, loaded,
used as the learner's reward, shipped in a policy blob to a robot, and trained
again through the CLI from a run directory written by a real ReplayBuffer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cloud.buffer import ReplayBuffer
from cloud.classifier_cli import labelled_frames
from cloud.cli import app as cli_app
from cloud.learner.classifier import TrainSettings, load_classifier, save_classifier, train_classifier
from cloud.learner.rewards import build_reward, table_relabel
from edge_agent.policy_holder import PolicyHolder
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError, SchemaError, WeightsError
from shared.policy import Actor
from shared.schema import EpisodeSpec
from shared.success_classifier import SuccessClassifier
from shared.weights import decode_weights, encode_weights

CAMERA = {"name": "overhead", "view": "external_camera_0", "size": 64, "codec": "raw"}  # cloud/demo.py PIXEL_CAMERAS
STEPS = 25
EPISODES = 60
TRAIN_EPISODES = 48  # the rest are held out whole: goals and arm poses the classifier never saw
STATE = {"observation": 10, "achieved_goal": 3, "desired_goal": 3}


@dataclasses.dataclass
class Recording:
    spec: EpisodeSpec
    episodes: list[list[StepRecord]]

    def frames(self, episodes: range) -> tuple[np.ndarray, np.ndarray]:
        """Next frames (the state each step led to) and its is_success, over ``episodes``."""
        steps = [s for e in episodes for s in self.episodes[e]]
        return np.stack([s.next_obs["overhead"] for s in steps]), np.array([s.success for s in steps], np.int64)

    def episode_of(self, episodes: range) -> np.ndarray:
        return np.concatenate([np.full(len(self.episodes[e]), e) for e in episodes])


@pytest.fixture(scope="module")
def recording() -> Recording:
    from hal_drivers.mujoco_fetch.config import FetchConfig
    from hal_drivers.mujoco_fetch.driver import FetchRobot

    robot = FetchRobot(FetchConfig(task="reach", seed=3, max_episode_steps=STEPS, camera_antialias=False,
                                   cameras=[CAMERA]))
    try:
        desc = robot.describe()
        spec = EpisodeSpec(observation=dict(desc.observation), action_dim=desc.action_shape[0],
                           action_low=desc.action_low, action_high=desc.action_high)
        rng = np.random.default_rng(3)
        episodes = []
        for e in range(EPISODES):
            obs, steps = robot.reset(), []
            for t in range(STEPS):
                if e % 2 == 0:  # to the goal and stay there
                    a = np.append(np.clip(10 * (obs["desired_goal"] - obs["observation"][:3]), -1, 1), 0.0)
                else:
                    a = rng.uniform(-1, 1, 4)
                res = robot.step(a.astype(np.float32))
                nxt = {k: np.array(v, copy=True) for k, v in res.observation.items()}
                steps.append(StepRecord(obs, a.astype(np.float32), -123.0, nxt, terminated=False,
                                        truncated=t == STEPS - 1, success=res.success, step=t))
                obs = nxt
            episodes.append(steps)
    finally:
        robot.close()
    return Recording(spec, episodes)


@pytest.fixture(scope="module")
def trained(recording, one_torch_thread) -> tuple[SuccessClassifier, object]:
    frames, labels = recording.frames(range(TRAIN_EPISODES))
    assert 0.2 < labels.mean() < 0.8, labels.mean()  # both classes, well represented
    return train_classifier({"overhead": frames}, labels, TrainSettings(epochs=30, seed=0),
                            groups=recording.episode_of(range(TRAIN_EPISODES)))  # held out: whole episodes


def _probability(model: SuccessClassifier, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.probability({"overhead": torch.from_numpy(frames)}).numpy()


def _balanced(pred: np.ndarray, labels: np.ndarray) -> float:
    y = labels.astype(bool)
    return float((pred[y].mean() + (~pred[~y]).mean()) / 2)


def test_classifier_beats_chance_on_unseen_episodes(recording, trained):
    model, report = trained
    assert report.heldout.balanced_accuracy >= 0.8, report  # its own held-out frames
    assert 0 < report.heldout.positives < report.heldout.frames
    assert report.train.precision > 0.7 and report.train.recall > 0.7
    frames, labels = recording.frames(range(TRAIN_EPISODES, EPISODES))  # whole episodes it never saw
    assert labels.any() and not labels.all()
    assert _balanced(_probability(model, frames) > 0.5, labels) >= 0.8


def test_save_load_round_trip_and_refusals(tmp_path, recording, trained):
    model, _ = trained
    path = tmp_path / "clf.safetensors"
    save_classifier(model, path, {"label": "success"})
    loaded = load_classifier(path, cameras={"overhead": (64, 64, 3), "side": (64, 64, 3)})
    assert loaded.arch() == model.arch() and loaded.arch()["version"] == 1
    frames, _ = recording.frames(range(TRAIN_EPISODES, EPISODES))
    np.testing.assert_array_equal(_probability(loaded, frames), _probability(model, frames))

    with pytest.raises(ConfigError, match="camera 'overhead' as 64x64x3, the data's is 32x32x3"):
        load_classifier(path, cameras={"overhead": (32, 32, 3)})
    with pytest.raises(ConfigError, match="reads camera 'overhead', which the data does not have"):
        load_classifier(path, cameras={"side": (64, 64, 3)})

    # tensors of one arch under another's metadata: refused before building anything
    other = SuccessClassifier([("overhead", (64, 64, 3))], latent=32)
    meta = {"format": "fleetrl.classifier", "format_version": "1", "arch": json.dumps(model.arch())}
    save_file(other.state_dict(), str(tmp_path / "mixed.safetensors"), metadata=meta)
    with pytest.raises(ConfigError, match="do not match its arch"):
        load_classifier(tmp_path / "mixed.safetensors")
    save_file(model.state_dict(), str(tmp_path / "v9.safetensors"), metadata={**meta, "format_version": "9"})
    with pytest.raises(ConfigError, match="format version '9'"):
        load_classifier(tmp_path / "v9.safetensors")
    bad_arch = {**model.arch(), "version": 2}
    save_file(model.state_dict(), str(tmp_path / "a2.safetensors"), metadata={**meta, "arch": json.dumps(bad_arch)})
    with pytest.raises(ConfigError, match="unsupported classifier arch version 2"):
        load_classifier(tmp_path / "a2.safetensors")
    save_file(model.state_dict(), str(tmp_path / "policy.safetensors"), metadata={"format": "fleetrl.weights.v1"})
    with pytest.raises(ConfigError, match="not a fleetrl success classifier"):
        load_classifier(tmp_path / "policy.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_classifier(tmp_path / "junk.safetensors")
    (tmp_path / "a_file").write_text("")
    for where in (tmp_path, tmp_path / "a_file" / "clf.safetensors"):  # a directory; under a plain file
        with pytest.raises(ConfigError, match="cannot write the classifier file"):
            save_classifier(model, where)


def test_rows_are_scored_from_their_next_frames_not_the_reward_column(tmp_path, recording, trained):
    model, _ = trained
    path = tmp_path / "clf.safetensors"
    save_classifier(model, path)
    cfg = LearnerAlgoConfig(reward="classifier", classifier=path, classifier_threshold=0.5, image_fields=["side"])
    reward = build_reward(cfg)
    assert reward.name == "classifier"
    relabel = table_relabel(cfg)
    assert relabel is not None
    relabel.check(recording.spec)

    eps = range(TRAIN_EPISODES, EPISODES)
    table = pa.Table.from_batches([build_batch(recording.spec, "r", f"e{e}", recording.episodes[e]) for e in eps])
    scored = relabel(table, recording.spec)
    frames, labels = recording.frames(eps)
    want = _probability(model, frames) > 0.5
    np.testing.assert_array_equal(scored.column("reward").to_numpy(), want.astype(np.float32))
    ended = table.column("terminated").to_numpy(zero_copy_only=False) | want  # success ends the episode
    np.testing.assert_array_equal(scored.column("terminated").to_numpy(zero_copy_only=False), ended)
    assert set(table.column("reward").to_pylist()) == {-123.0}  # the driver's reward is not what is kept
    assert _balanced(want, labels) >= 0.8

    tensors, arch = reward.publish_parts()
    assert tensors and all(k.startswith("classifier.") for k in tensors)
    assert arch["classifier"]["threshold"] == 0.5 and arch["classifier"]["kind"] == "success_classifier"

    for bad, match in ((cfg.model_copy(update={"classifier": None}), "needs learner.classifier"),
                       (cfg.model_copy(update={"classifier": tmp_path / "missing.safetensors"}), "learner.classifier.*does not exist")):
        with pytest.raises(ConfigError, match=match):
            build_reward(bad)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="learner.classifier.*not a readable"):
        table_relabel(cfg.model_copy(update={"classifier": tmp_path / "junk.safetensors"}))
    with pytest.raises(ConfigError, match="history_fraction"):
        table_relabel(cfg.model_copy(update={"history_fraction": 0.5}))
    no_camera = EpisodeSpec({k: v for k, v in recording.spec.observation.items() if k != "overhead"},
                            recording.spec.action_dim, recording.spec.action_low, recording.spec.action_high)
    with pytest.raises(SchemaError, match="learner.classifier.*which the data does not have"):
        relabel.check(no_camera)


def _blob(reward, version: int = 1, tensors_update=None, arch_update=None):
    actor = Actor(sum(STATE.values()), 4, hidden=(32,))
    parts, arch_parts = reward.publish_parts()
    tensors = {**actor.state_dict(), **parts, **(tensors_update or {})}
    arch = {"actor": actor.arch(), "obs_fields": list(STATE), **arch_parts, **(arch_update or {})}
    blob = encode_weights(tensors, version, arch)
    return decode_weights(blob.data, blob.sha256, 1 << 30)


def test_policy_blob_with_classifier_loads_on_the_robot_and_answers_success(tmp_path, recording, trained):
    model, _ = trained
    save_classifier(model, tmp_path / "clf.safetensors")
    reward = build_reward(LearnerAlgoConfig(reward="classifier", classifier=tmp_path / "clf.safetensors",
                                            classifier_threshold=0.5))
    holder = PolicyHolder(dict(STATE), 4, image_fields={"overhead": (64, 64, 3)})
    assert holder.success({}) is None  # no policy yet
    holder.swap(holder.prepare(_blob(reward)))
    steps = [s for e in recording.episodes[TRAIN_EPISODES:] for s in e]
    said = np.array([holder.success(s.next_obs) for s in steps])
    frames = np.stack([s.next_obs["overhead"] for s in steps])
    np.testing.assert_array_equal(said, _probability(model, frames) > 0.5)
    assert _balanced(said, np.array([s.success for s in steps])) >= 0.8
    assert holder.act(steps[0].obs, deterministic=True) is not None

    with pytest.raises(WeightsError, match="success classifier reads camera 'overhead', which this robot does not"):
        PolicyHolder(dict(STATE), 4).prepare(_blob(reward, 2))
    with pytest.raises(WeightsError, match="success classifier reads camera 'overhead' as 64x64x3"):
        PolicyHolder(dict(STATE), 4, image_fields={"overhead": (32, 32, 3)}).prepare(_blob(reward, 2))
    with pytest.raises(WeightsError, match="do not match"):
        holder.prepare(_blob(reward, 2, {"classifier.head.weight": torch.zeros(1, 7)}))
    with pytest.raises(WeightsError, match="NaN"):
        holder.prepare(_blob(reward, 2, {"classifier.head.bias": torch.tensor([float("nan")])}))
    with pytest.raises(WeightsError, match="threshold"):
        holder.prepare(_blob(reward, 2, arch_update={"classifier": {**model.arch(), "threshold": 1.5}}))
    with pytest.raises(WeightsError, match="classifier arch field 'latent'"):
        holder.prepare(_blob(reward, 2, arch_update={"classifier": {**model.arch(), "latent": 0, "threshold": 0.5}}))
    plain = PolicyHolder(dict(STATE), 4)  # a blob without a classifier: as before, and no success verdict
    actor = Actor(sum(STATE.values()), 4, hidden=(32,))
    blob = encode_weights(actor.state_dict(), 1, {"actor": actor.arch(), "obs_fields": list(STATE)})
    plain.swap(plain.prepare(decode_weights(blob.data, blob.sha256, 1 << 30)))
    assert plain.success(steps[0].next_obs) is None


def _run_dir(root: Path, recording: Recording, episodes: range, success: bool | None = None) -> Path:
    """A run's data_dir written as ingest writes it: chunks of 10 steps through ReplayBuffer.write."""
    buf = ReplayBuffer(root / "buffer", 10_000)
    buf.check_spec(recording.spec)
    items, seq = [], 0
    for e in episodes:
        steps = recording.episodes[e]
        if success is not None:
            steps = [dataclasses.replace(s, success=success) for s in steps]
        for i in range(0, len(steps), 10):
            seq += 1
            items.append(("sim-0", seq, build_batch(recording.spec, "sim-0", f"e{e}", steps[i : i + 10])))
    buf.write(items[: len(items) // 2])
    buf.write(items[len(items) // 2 :])  # two segments
    return root


def test_cli_trains_from_a_run_dir_and_refuses_one_class(tmp_path, recording, one_torch_thread):
    run = _run_dir(tmp_path / "run", recording, range(EPISODES))
    # every stored row gives its next frame and its success column
    got = labelled_frames([run], ["overhead"], "success")
    want_frames, want_labels = recording.frames(range(EPISODES))
    np.testing.assert_array_equal(got.frames["overhead"], want_frames)
    np.testing.assert_array_equal(got.labels, want_labels)
    assert len(set(got.episodes)) == EPISODES  # the held-out split keeps these whole
    segs = sorted((run / "buffer" / "segments").glob("*.parquet"))
    assert len(segs) == 2 and len(labelled_frames(segs[:1], ["overhead"], "success").labels) == len(want_labels) // 2
    few = labelled_frames([run], ["overhead"], "success", max_frames=len(want_labels) // 2)
    assert few.labels.sum() == want_labels.sum() and len(few.labels) < 0.8 * len(want_labels)  # successes all kept

    runner = CliRunner()
    out = tmp_path / "clf.safetensors"
    res = runner.invoke(cli_app, ["classifier", "train", "--data", str(run), "--camera", "overhead",
                                  "--out", str(out), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert "held-out: accuracy" in res.output and out.is_file()
    assert load_classifier(out).cameras == ("overhead",)

    one = _run_dir(tmp_path / "one", recording, range(4), success=False)
    for args, match in ((["--data", str(one), "--camera", "overhead"], "both classes"),
                        (["--data", str(run), "--camera", "overhead", "--label", "human"], "both classes"),
                        (["--data", str(run), "--camera", "wrist"], "no such camera"),
                        (["--data", str(tmp_path / "nowhere"), "--camera", "overhead"], "no such run directory")):
        res = runner.invoke(cli_app, ["classifier", "train", *args, "--out", str(tmp_path / "x.safetensors")])
        assert res.exit_code == 2 and match in res.output, (args, res.output)
    assert not (tmp_path / "x.safetensors").exists()
    res = runner.invoke(cli_app, ["classifier", "train", "--data", str(run), "--camera", "overhead", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output, res.output  # before any reading or training


def test_trainer_with_classifier_reward_trains_on_scored_rows_and_ships_the_classifier(tmp_path, recording, trained,
                                                                                       trainers):
    """The learner's path: the buffer scores each row as it indexes it (memory only: the segments keep the
    driver's reward), the trainer trains on those rewards, every published blob carries the classifier."""
    import time

    from cloud.learner.trainer import Trainer

    model, _ = trained
    save_classifier(model, tmp_path / "clf.safetensors")
    run = _run_dir(tmp_path / "run", recording, range(8))
    cfg = LearnerAlgoConfig(reward="classifier", classifier=tmp_path / "clf.safetensors", learning_starts=50,
                            batch_size=32, hidden=[32], publish_every=5, history_fraction=0.0)
    buf = ReplayBuffer(run / "buffer", 10_000, image_fields=cfg.image_fields, relabel=table_relabel(cfg))
    assert buf.dims is not None and buf.dims.image_fields == () and buf.memory is not None
    frames, _ = recording.frames(range(8))
    want = (_probability(model, frames) > 0.5).astype(np.float32)
    np.testing.assert_array_equal(buf.memory.data["reward"][: buf.size], want)  # reloaded rows, scored
    disk = pa.concat_tables([pq.read_table(p) for p in buf.segment_paths()])
    assert set(disk.column("reward").to_pylist()) == {-123.0}
    blobs: list = []
    t = Trainer(buf, cfg, blobs.append)
    trainers.append(t)
    t.start()
    deadline = time.monotonic() + 60
    while not blobs and t.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert t.error is None and blobs, t.error
    w = decode_weights(blobs[0].data, blobs[0].sha256, 1 << 30)
    assert w.arch["classifier"]["threshold"] == 0.5 and w.arch["actor"]["kind"] == "mlp_gaussian"
    holder = PolicyHolder(dict(STATE), 4, image_fields={"overhead": (64, 64, 3)})
    holder.swap(holder.prepare(w))
    step = recording.episodes[0][-1]  # the controller's episode ends at the goal
    assert holder.success(step.next_obs) == bool(_probability(model, step.next_obs["overhead"][None])[0] > 0.5)
