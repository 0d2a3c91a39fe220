"""learner.normalize_observations: the learner trains on standardised state, robots run raw-input policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.buffer import ReplayBuffer
from cloud.learner import checkpoint
from cloud.learner.normalize import ObsNormalizer
from cloud.learner.trainer import Trainer
from harness import worker_idle
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError
from shared.policy import build_actor
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import WeightsBlob, decode_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = EpisodeSpec({"pos": FieldSpec((3,)), "vel": FieldSpec((2,))}, 2, (-1.0, -1.0), (1.0, 1.0))
ARCH = {"kind": "mlp_gaussian", "version": 1, "obs_dim": 5, "act_dim": 2, "hidden": [16, 16]}


class Published(list):
    def __call__(self, blob: WeightsBlob) -> None:
        self.append(blob)


def _fill(buf: ReplayBuffer, chunks: int, rng: np.random.Generator, demo: bool = False) -> None:
    for s in range(chunks):
        steps = []
        for i in range(16):
            # positions near 1.3 m with cm spread, velocities near 0: the scales Fetch mixes
            obs = {"pos": 1.3 + 0.02 * rng.normal(size=3), "vel": 0.01 * rng.normal(size=2)}
            nxt = {"pos": 1.3 + 0.02 * rng.normal(size=3), "vel": 0.01 * rng.normal(size=2)}
            steps.append(StepRecord(obs, np.tanh(obs["vel"] * 50), 0.0, nxt, False, i == 15, step=i, demo=demo))
        buf.write([("arm", buf.hwm("arm") + 1, build_batch(SPEC, "arm", f"e{s}{demo}", steps))])


def _cfg(**over) -> LearnerAlgoConfig:
    base = {"learning_starts": 32, "publish_every": 64, "batch_size": 32, "hidden": [16, 16], "threads": 1,
            "device": "cpu", "prefetch_batches": 0, "normalize_observations": True, "checkpoint_every": 10**6}
    return LearnerAlgoConfig(**{**base, **over})


def test_folding_gives_the_same_function_of_raw_observations_and_unfolding_undoes_it():
    torch.manual_seed(0)
    norm = ObsNormalizer(torch.tensor([1.3, 1.3, 1.3, 0.0, 0.0]), torch.tensor([0.02, 0.02, 0.02, 0.01, 0.005]))
    actor, raw = build_actor(ARCH), build_actor(ARCH)
    x = torch.tensor([1.3, 1.3, 1.3, 0.0, 0.0]) + torch.randn(64, 5) * torch.tensor([0.02, 0.02, 0.02, 0.01, 0.01])
    raw.load_state_dict(norm.fold(actor.state_dict()))
    want = actor.act(norm({"obs": x, "next_obs": x})["obs"], deterministic=True)
    np.testing.assert_allclose(raw.act(x, deterministic=True).detach(), want.detach(), atol=1e-5)
    back = norm.unfold(norm.fold(actor.state_dict()))
    for k, v in actor.state_dict().items():
        np.testing.assert_allclose(back[k], v, rtol=1e-5, atol=1e-5)


def test_a_constant_field_is_centred_not_blown_up():
    norm = ObsNormalizer(torch.zeros(2), torch.tensor([0.0, 1.0]))
    assert float(norm.std[0]) == pytest.approx(1e-2)


def test_trainer_publishes_raw_input_policies_and_checkpoints_its_statistics(tmp_path: Path, trainers):
    rng = np.random.default_rng(1)
    buf = ReplayBuffer(tmp_path / "buffer", 10_000, demo_capacity=10_000)
    buf.check_spec(SPEC)
    _fill(buf, 8, rng, demo=True)
    published, ckpt = Published(), tmp_path / "learner.safetensors"
    t = Trainer(buf, _cfg(algorithm="bc", utd_ratio=1.0, lr=3e-3), published, checkpoint_path=ckpt)
    trainers.append(t)
    t.start()
    worker_idle(t, 128)
    t.stop()
    t.join(10)
    assert t._norm is not None and t._sac is not None
    assert float(t._norm.mean[0]) == pytest.approx(1.3, abs=0.01) and float(t._norm.std[3]) < 0.02
    w = decode_weights(published[-1].data, published[-1].sha256, 1 << 30)
    robot = build_actor(w.arch["actor"])
    robot.load_state_dict(w.tensors)  # what a robot runs: the plain architecture on raw observations
    demo = buf.demos.storage.data  # type: ignore[union-attr]
    obs = torch.from_numpy(demo["obs"][:64])
    learner_view = t._sac.actor.act(t._norm({"obs": obs, "next_obs": obs})["obs"], deterministic=True)
    np.testing.assert_allclose(robot.act(obs, deterministic=True).detach(), learner_view.detach(), atol=1e-4)
    # it learned the demonstrated actions, which depend on the 1 cm-scale velocity only
    err = (robot.act(obs, deterministic=True) - torch.from_numpy(demo["action"][:64])).pow(2).sum(-1).mean()
    assert float(err) < 0.05

    saved = checkpoint.load(ckpt)
    np.testing.assert_allclose(saved["obs_norm"]["mean"], t._norm.mean)
    again = Trainer(ReplayBuffer(tmp_path / "buffer", 10_000, demo_capacity=10_000), _cfg(algorithm="bc"),
                    Published(), checkpoint_path=ckpt, resume=True)
    trainers.append(again)
    again.start()
    worker_idle(again, 128)
    assert again._norm is not None and torch.equal(again._norm.std, t._norm.std)
    off = Trainer(ReplayBuffer(tmp_path / "buffer", 10_000, demo_capacity=10_000),
                  _cfg(algorithm="bc", normalize_observations=False), Published(), checkpoint_path=ckpt, resume=True)
    off.start()
    off.join(30)
    assert isinstance(off.error, ConfigError) and "normalize_observations" in str(off.error)
