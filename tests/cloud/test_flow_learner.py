"""The live learner with learner.policy = "flow": demo rows keep their action chunks in the demo ring
(cut per episode, across a reopen too), FlowSFT trains on them, and robots get a flow policy they load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.buffer import ReplayBuffer
from cloud.learner.algorithms import build
from cloud.learner.flow_sft import CHUNK, CHUNK_VALID, FlowSFT
from cloud.learner.sac import SACConfig
from cloud.learner.trainer import Trainer
from harness import worker_idle
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError
from shared.observations import state_sizes
from shared.policy import FlowActor
from shared.policy_runner import load_policy
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import WeightsBlob, decode_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((3,))}, action_dim=2,
                   action_low=(-2.0, -2.0), action_high=(2.0, 2.0))
STEPS = 12  # per episode, one wire chunk each
HORIZON = 4
PROJ = np.random.default_rng(42).normal(size=(6, 2)).astype(np.float32) * 0.5


def expert(obs: np.ndarray) -> np.ndarray:
    return (np.tanh(obs @ PROJ) * 1.6).astype(np.float32)  # robot units: bounds are +-2


def _write(buf: ReplayBuffer, seq: int, episodes: int, robot: str = "arm") -> int:
    rng = np.random.default_rng(seq)
    for s in range(seq, seq + episodes):
        steps = []
        for i in range(STEPS):
            obs = {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()}
            action = expert(np.concatenate([obs["pos"], obs["goal"]]))
            steps.append(StepRecord(obs, action, 0.0, obs, False, i == STEPS - 1, step=i, demo=True))
        buf.write([(robot, s, build_batch(SPEC, robot, f"{robot}-{s}", steps))])
    return seq + episodes


def _buffer(root: Path) -> ReplayBuffer:
    buf = ReplayBuffer(root, memory_capacity=10_000, demo_capacity=10_000, chunk_horizon=HORIZON)
    if buf.spec is None:
        buf.check_spec(SPEC)
    return buf


def _cfg(**over: object) -> LearnerAlgoConfig:
    base = {"algorithm": "bc", "policy": "flow", "flow_horizon": HORIZON, "flow_steps": 6, "batch_size": 64,
            "hidden": [64, 64], "lr": 3e-3, "utd_ratio": 8.0, "publish_every": 10**6, "checkpoint_every": 10**6,
            "threads": 1, "device": "cpu", "prefetch_batches": 0}
    return LearnerAlgoConfig(**{**base, **over})


def _check_ring(buf: ReplayBuffer) -> None:
    assert buf.demos is not None
    d = {k: v[: buf.demo_size] for k, v in buf.demos.storage.data.items()}
    assert d[CHUNK].shape == (buf.demo_size, HORIZON, 2)
    np.testing.assert_array_equal(d[CHUNK][:, 0], d["action"])  # a chunk starts with the row's own action
    for i in range(buf.demo_size):  # each row's chunk: its episode's next actions, the last one repeated
        step = i % STEPS
        real = min(HORIZON, STEPS - step)
        np.testing.assert_array_equal(d[CHUNK_VALID][i], [1.0] * real + [0.0] * (HORIZON - real))
        want = d["action"][[i + min(k, real - 1) for k in range(HORIZON)]]
        np.testing.assert_array_equal(d[CHUNK][i], want)


def test_demo_ring_keeps_each_rows_chunk_within_its_episode_and_after_a_reopen(tmp_path: Path) -> None:
    buf = _buffer(tmp_path / "buffer")
    _write(buf, 1, 5)
    assert buf.demo_size == 5 * STEPS
    _check_ring(buf)
    batch = buf.sample(32, np.random.default_rng(0), demo_fraction=1.0)
    np.testing.assert_allclose(batch[CHUNK][:, 0], batch["action"])  # normalised like the action
    assert np.abs(batch[CHUNK]).max() <= 0.8 + 1e-6  # 1.6 of +-2: 0.8 in [-1, 1]
    again = _buffer(tmp_path / "buffer")
    assert again.demo_size == 5 * STEPS
    _check_ring(again)


def test_the_learner_trains_a_flow_policy_a_robot_loads(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path / "buffer")
    _write(buf, 1, 24)  # 288 demo rows
    published: list[WeightsBlob] = []
    t = Trainer(buf, _cfg(normalize_observations=True, utd_ratio=3.0, publish_every=432), published.append)
    trainers.append(t)
    t.start()
    worker_idle(t, 864)  # utd_ratio x demo rows
    assert t.error is None and t.updates == 864 and "flow_loss" in t.last_losses
    w = decode_weights(published[-1].data, published[-1].sha256, 1 << 30)
    assert w.arch["actor"]["kind"] == "flow" and w.arch["actor"]["horizon"] == HORIZON
    policy = load_policy(w, state_sizes(SPEC), 2, max_params=1_000_000)
    assert isinstance(policy.actor, FlowActor) and policy.horizon == HORIZON
    rng = np.random.default_rng(99)
    obs = [{k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()} for _ in range(64)]
    chunks = policy.act_chunk_batch(obs, deterministic=True)
    assert chunks.shape == (64, HORIZON, 2) and np.abs(chunks).max() <= 1.0
    want = np.stack([expert(np.concatenate([o["pos"], o["goal"]])) / 2.0 for o in obs])  # normalised
    err = float(np.mean((chunks[:, 0] - want) ** 2))
    assert err < 0.25 * float(np.mean(want ** 2)), err  # the first action is the demonstrated one (held out obs)


def test_flow_with_rl_or_pretraining_is_refused_when_built_in_code() -> None:
    cfg = _cfg()
    dims = type("Dims", (), {"obs_dim": 6, "act_dim": 2})()
    assert isinstance(build(cfg, dims, SACConfig(), torch.device("cpu")), FlowSFT)  # type: ignore[arg-type]
    cfg_sac = cfg.model_copy(update={"algorithm": "sac"})  # as a learner built in code could get it
    with pytest.raises(ConfigError, match='policy = "flow" trains with algorithm = "bc" or "hg_dagger"'):
        build(cfg_sac, dims, SACConfig(), torch.device("cpu"))  # type: ignore[arg-type]


def test_a_chunk_of_corrections_stops_where_the_person_handed_back(tmp_path: Path) -> None:
    buf = _buffer(tmp_path / "buffer")
    rng = np.random.default_rng(5)
    steps = []
    for i in range(STEPS):  # a person corrects steps 0-2 and 8-11; the policy drives 3-7 (not demo rows)
        obs = {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()}
        action = np.full(2, i / 10, np.float32)
        steps.append(StepRecord(obs, action, 0.0, obs, False, i == STEPS - 1, step=i,
                                intervention=i < 3 or i >= 8))
    buf.write([("arm", 1, build_batch(SPEC, "arm", "arm-1", steps))])
    assert buf.demos is not None and buf.demo_size == 7
    d = {k: v[: buf.demo_size] for k, v in buf.demos.storage.data.items()}
    np.testing.assert_allclose(d[CHUNK][:, :, 0] * 10, [[0, 1, 2, 2], [1, 2, 2, 2], [2, 2, 2, 2],
                                                       [8, 9, 10, 11], [9, 10, 11, 11], [10, 11, 11, 11],
                                                       [11, 11, 11, 11]], atol=1e-5)
    np.testing.assert_array_equal(d[CHUNK_VALID].sum(1), [3, 2, 1, 4, 3, 2, 1])
