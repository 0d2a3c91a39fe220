"""Learning from people: the demo ring, RLPD's mixed batches, BC, HG-DAgger's inputs, the critic ensemble,
checkpoints of each algorithm, and the human reward, over real buffers on disk fed with real chunks."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cloud.buffer import ReplayBuffer
from cloud.buffer.demos import MixedSource
from cloud.learner import checkpoint
from cloud.learner.bc import BC
from cloud.learner.sac import SAC, SACConfig
from cloud.learner.trainer import Trainer
from harness import worker_idle
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError
from shared.policy import build_actor
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import WeightsBlob, decode_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((3,))}, action_dim=4,
                   action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
CHUNK = 16
PROJ = np.random.default_rng(42).normal(size=(6, 4)).astype(np.float32) * 0.5


def expert(obs: np.ndarray) -> np.ndarray:
    """The demonstrator's action for an observation vector (pos then goal): what BC must learn."""
    return (np.tanh(obs @ PROJ) * 0.8).astype(np.float32)


def _buffer(root: Path, memory: int = 10_000, demo_capacity: int = 10_000, **kw) -> ReplayBuffer:
    buf = ReplayBuffer(root, memory_capacity=memory, demo_capacity=demo_capacity, **kw)
    if buf.spec is None:
        buf.check_spec(SPEC)
    return buf


def _write(buf: ReplayBuffer, seq: int, chunks: int, *, demo: bool = False, intervention: bool = False,
           robot: str = "arm", human_reward: float | None = None) -> int:
    """``chunks`` chunks of CHUNK rows; demo rows take the expert's action. Returns the next stream seq."""
    rng = np.random.default_rng(seq + (1000 if demo else 0))
    for s in range(seq, seq + chunks):
        steps = []
        for i in range(CHUNK):
            obs = {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()}
            nxt = {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()}
            flat = np.concatenate([obs["pos"], obs["goal"]])
            action = expert(flat) if demo or intervention else rng.uniform(-1, 1, 4).astype(np.float32)
            hr = float(rng.uniform(0, 1)) if human_reward is None else human_reward
            steps.append(StepRecord(obs, action, -1.0, nxt, False, i == CHUNK - 1, step=i, demo=demo,
                                    intervention=intervention, human_reward=hr))
        buf.write([(robot, s, build_batch(SPEC, robot, f"{robot}-{s}", steps))])
    return seq + chunks


def _human(batch: dict[str, np.ndarray]) -> np.ndarray:
    return (batch["demo"] > 0) | (batch["intervention"] > 0)


def _cfg(**over) -> LearnerAlgoConfig:
    base = {"learning_starts": 32, "publish_every": 10, "batch_size": 32, "hidden": [32, 32], "utd_ratio": 1.0,
            "checkpoint_every": 10**6, "memory_capacity": 10_000, "threads": 1, "device": "cpu",
            "prefetch_batches": 0}
    return LearnerAlgoConfig(**{**base, **over})


def _spy(monkeypatch: pytest.MonkeyPatch, cls: type[SAC] | type[BC], seen: list[dict[str, torch.Tensor]]) -> None:
    """Record every batch ``cls.update`` is given (the real update still runs)."""
    real = cls.update

    def update(self, batch):
        seen.append(dict(batch))
        return real(self, batch)

    monkeypatch.setattr(cls, "update", update)


class Published(list):
    def __call__(self, blob: WeightsBlob) -> None:
        self.append(blob)


# ------------------------------------------------------------------ the demo ring and mixed batches


def test_rlpd_batches_are_exactly_half_demo(tmp_path: Path) -> None:
    buf = _buffer(tmp_path / "buffer")
    seq = _write(buf, 1, 8)  # online rows, nobody took over
    seq = _write(buf, seq, 3, demo=True)
    _write(buf, seq, 2, intervention=True)
    assert buf.demo_size == 5 * CHUNK
    assert buf.size == 10 * CHUNK, "online ring: the policy's rows and the interventions, not the recorded demos"
    mixed, rng = MixedSource(buf, 0.5), np.random.default_rng(0)
    for _ in range(20):
        batch = mixed.sample(256, rng)
        assert len(batch["obs"]) == 256
        assert _human({k: v[128:] for k, v in batch.items()}).all(), "the demo half comes last, all flagged"
        online_flagged = int(_human({k: v[:128] for k, v in batch.items()}).sum())
        # interventions are online rows too (HIL-SERL puts them in both rings): count them apart
        assert int(_human(batch).sum()) == 128 + online_flagged
        assert (batch["demo"][:128] == 0).all(), "recorded demonstrations never come from the online ring"
    odd = MixedSource(buf, 0.3).sample(255, rng)  # round(76.5) = 76 demo rows
    assert _human({k: v[-76:] for k, v in odd.items()}).all() and (odd["demo"][:-76] == 0).all()


def test_rlpd_batches_from_demos_and_policy_rows_count_128_of_256(tmp_path: Path) -> None:
    buf = _buffer(tmp_path / "buffer")
    seq = _write(buf, 1, 10)
    _write(buf, seq, 4, demo=True)
    rng = np.random.default_rng(1)
    for _ in range(10):
        assert int(_human(MixedSource(buf, 0.5).sample(256, rng)).sum()) == 128


def test_an_empty_demo_ring_gives_all_online_batches(tmp_path: Path) -> None:
    buf = _buffer(tmp_path / "buffer")
    _write(buf, 1, 6)
    assert buf.demo_size == 0
    got = MixedSource(buf, 0.5).sample(256, np.random.default_rng(3))
    want = buf.sample(256, np.random.default_rng(3))
    assert not _human(got).any()
    assert all(np.array_equal(got[k], want[k]) for k in want), "the same draws as plain online sampling"


def test_demo_ring_holds_live_interventions_and_survives_a_reopen(tmp_path: Path) -> None:
    buf = _buffer(tmp_path / "buffer")
    seq = _write(buf, 1, 2, intervention=True)
    seq = _write(buf, seq, 6)
    seq = _write(buf, seq, 1, demo=True)
    _write(buf, seq, 6)
    assert buf.demo_size == 3 * CHUNK
    before = np.sort(buf.demos.storage.data["action"][: buf.demo_size], axis=0)  # type: ignore[union-attr]
    assert (buf.demos.storage.data["intervention"][: 2 * CHUNK] == 1).all()  # type: ignore[union-attr]

    # memory now holds only the newest rows: the demo rows come back from the older segments
    again = _buffer(tmp_path / "buffer", memory=2 * CHUNK)
    assert again.demo_size == 3 * CHUNK
    after = np.sort(again.demos.storage.data["action"][: again.demo_size], axis=0)  # type: ignore[union-attr]
    np.testing.assert_array_equal(after, before)
    assert int(MixedSource(again, 0.5).sample(64, np.random.default_rng(0))["demo"].sum()) <= 32


def test_a_reopen_refills_memory_with_the_online_rows_it_held_when_demos_came_last(tmp_path: Path) -> None:
    buf = _buffer(tmp_path / "buffer", memory=4 * CHUNK)
    seq = _write(buf, 1, 4)
    _write(buf, seq, 4, demo=True)  # the newest segments hold demonstrations only
    held = np.sort(buf.memory.data["action"][: buf.size], axis=0)  # type: ignore[union-attr]
    again = _buffer(tmp_path / "buffer", memory=4 * CHUNK)
    assert (again.size, again.demo_size) == (4 * CHUNK, 4 * CHUNK)
    np.testing.assert_array_equal(np.sort(again.memory.data["action"][: again.size], axis=0), held)  # type: ignore[union-attr]


def test_demo_paths_import_another_run_dir_and_its_segment_files(tmp_path: Path) -> None:
    other = _buffer(tmp_path / "demos" / "buffer")
    seq = _write(other, 1, 3, demo=True)
    _write(other, seq, 2)  # not demonstrations: not imported
    new_run = _buffer(tmp_path / "run" / "buffer", demo_paths=[tmp_path / "demos"])  # a new run: spec from demos
    assert new_run.spec == SPEC and new_run.demo_size == 3 * CHUNK and new_run.size == 0
    batch = MixedSource(new_run, 1.0).sample(64, np.random.default_rng(0))
    assert (batch["demo"] == 1).all()

    seg = other.segment_paths()[0]
    again = _buffer(tmp_path / "run" / "buffer", demo_paths=[seg])  # the run exists now: one segment file
    assert again.demo_size == CHUNK


def test_demo_paths_with_another_spec_are_refused_naming_path_and_field_and_nothing_loads(tmp_path: Path) -> None:
    good = _buffer(tmp_path / "good" / "buffer")
    _write(good, 1, 2, demo=True)
    bad_spec = EpisodeSpec(observation={"pos": FieldSpec((4,)), "goal": FieldSpec((3,))}, action_dim=4,
                           action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
    bad = ReplayBuffer(tmp_path / "bad" / "buffer", memory_capacity=100)
    bad.check_spec(bad_spec)
    rng = np.random.default_rng(0)
    steps = [StepRecord({"pos": rng.normal(size=4).astype(np.float32), "goal": np.zeros(3, np.float32)},
                        np.zeros(4, np.float32), 0.0, {"pos": np.zeros(4, np.float32), "goal": np.zeros(3, np.float32)},
                        True, False, demo=True)]
    bad.write([("arm", 1, build_batch(bad_spec, "arm", "e", steps))])

    run = _buffer(tmp_path / "run" / "buffer")
    with pytest.raises(ConfigError, match=r"learner.demo_paths: .*bad.* observation.pos: run has .*3.*the import has .*4"):
        _buffer(tmp_path / "run" / "buffer", demo_paths=[tmp_path / "good", tmp_path / "bad"])
    with pytest.raises(ConfigError, match=r"learner.demo_paths: .*bad.*segments.* observation.pos: run has"):
        _buffer(tmp_path / "run" / "buffer", demo_paths=[tmp_path / "good", bad.segment_paths()[0]])
    lone = tmp_path / "lone.parquet"  # away from its run's manifest: only its columns say what it is
    lone.write_bytes(bad.segment_paths()[0].read_bytes())
    with pytest.raises(ConfigError, match=r"learner.demo_paths: .*lone.parquet.*column 'obs.pos'"):
        _buffer(tmp_path / "run" / "buffer", demo_paths=[tmp_path / "good", lone])
    assert run.demos is not None
    with pytest.raises(ConfigError):
        run.demos.load_imports([tmp_path / "good", tmp_path / "bad"], SPEC)
    assert run.demo_size == 0, "the good path before the bad one was not half-loaded"
    with pytest.raises(ConfigError, match="no such file"):
        _buffer(tmp_path / "new" / "buffer", demo_paths=[tmp_path / "nowhere"])
    # a segment file of a run whose action bounds differ: same columns, rows normalised wrongly if taken
    wide = EpisodeSpec(observation=SPEC.observation, action_dim=4, action_low=(-2.0,) * 4, action_high=(2.0,) * 4)
    other = ReplayBuffer(tmp_path / "wide" / "buffer", memory_capacity=100)
    other.check_spec(wide)
    other.write([("arm", 1, build_batch(wide, "arm", "e", [StepRecord(
        {k: np.zeros(f.shape, np.float32) for k, f in SPEC.observation.items()}, np.zeros(4, np.float32), 0.0,
        {k: np.zeros(f.shape, np.float32) for k, f in SPEC.observation.items()}, True, False, demo=True)]))])
    with pytest.raises(ConfigError, match=r"learner.demo_paths: .*wide.* action_low: run has .*-1.0.*the import has .*-2.0"):
        _buffer(tmp_path / "run" / "buffer", demo_paths=[other.segment_paths()[0]])
    foreign = tmp_path / "foreign.parquet"  # a Parquet file that is no fleetrl segment: said, not a traceback
    pq.write_table(pa.table({"x": [1.0, 2.0]}), foreign)
    with pytest.raises(ConfigError, match=r"learner.demo_paths: .*foreign.parquet.* lack the column"):
        _buffer(tmp_path / "run" / "buffer", demo_paths=[foreign])
    assert ReplayBuffer(tmp_path / "new" / "buffer", 10).spec is None, "a refused new run fixed no spec"


# ------------------------------------------------------------------ algorithms


def test_rlpd_ensemble_has_ten_layernorm_critics_and_a_target_over_two(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path / "buffer")
    seq = _write(buf, 1, 2, demo=True)
    _write(buf, seq, 3)
    t = Trainer(buf, _cfg(algorithm="rlpd", critics=10, critic_subset=2, critic_layer_norm=True), Published())
    trainers.append(t)
    t.start()
    worker_idle(t, 3 * CHUNK)
    sac = t._sac
    assert isinstance(sac, SAC)
    assert sac.critic.n == 10 and all(w.shape[0] == 10 for w in sac.critic.weights)
    assert len(sac.critic.norm_gains) == 2 and all(g.shape == (10, 1, 32) for g in sac.critic.norm_gains)
    q = torch.arange(10, dtype=torch.float32)[:, None].expand(10, 5) + 0.0
    mins = [sac._target_min(q)[0].item() for _ in range(400)]
    # the min of 2 distinct members of 0..9: P(min = k) = (9 - k) / 45, so 8 sometimes, 9 never
    assert set(mins) <= set(range(9)) and 8 in mins and 0.1 < mins.count(0) / 400 < 0.32
    twin = SAC(6, 4, SACConfig(hidden=(8,)))
    assert twin.critic.n == 2 and len(twin.critic.norm_gains) == 0
    assert torch.equal(twin._target_min(q[:2]), q[0]), "twin critics: the plain min, no draw"


def test_bc_brings_the_actor_to_the_demonstrated_actions(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path / "buffer")
    _write(buf, 1, 16, demo=True)  # 256 demo rows, no online rows at all: BC needs none
    published = Published()
    t = Trainer(buf, _cfg(algorithm="bc", utd_ratio=4.0, batch_size=64, hidden=[64, 64], lr=3e-3,
                          publish_every=1024), published)
    trainers.append(t)
    t.start()
    worker_idle(t, 1024)
    assert buf.size == 0 and t.updates == 1024
    demo = buf.demos.storage.data  # type: ignore[union-attr]
    obs = torch.from_numpy(demo["obs"][: buf.demo_size])
    target = torch.from_numpy(demo["action"][: buf.demo_size])  # bounds are [-1, 1]: stored = normalised
    fresh = BC(6, 4, SACConfig(hidden=(64, 64)))
    w = decode_weights(published[-1].data, published[-1].sha256, 1 << 30)
    actor = build_actor(w.arch["actor"])
    actor.load_state_dict(w.tensors)
    before = (fresh.actor.act(obs, deterministic=True) - target).pow(2).sum(-1).mean().item()
    after = (actor.act(obs, deterministic=True) - target).pow(2).sum(-1).mean().item()
    assert before > 0.3 and after < 0.1 * before, (before, after)


def test_hg_dagger_starts_on_the_first_intervention_and_trains_on_human_rows_only(tmp_path: Path, trainers,
                                                                                  monkeypatch) -> None:
    buf = _buffer(tmp_path / "buffer")
    seq = _write(buf, 1, 4)  # the policy drove, nobody took over: nothing to learn
    seen: list[dict[str, torch.Tensor]] = []
    t = Trainer(buf, _cfg(algorithm="hg_dagger", learning_starts=10_000), Published())
    trainers.append(t)
    t.start()
    worker_idle(t, 0)
    assert t.updates == 0
    _spy(monkeypatch, BC, seen)
    _write(buf, seq, 1, intervention=True)
    t.notify_data()
    worker_idle(t, CHUNK)
    assert t.updates == CHUNK and seen and all((b["intervention"] == 1).all() for b in seen)


def test_bc_pretrain_warm_starts_rlpd_before_rl(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path / "buffer")
    seq = _write(buf, 1, 8, demo=True)
    _write(buf, seq, 3)
    published = Published()
    t = Trainer(buf, _cfg(algorithm="rlpd", bc_pretrain_updates=300, lr=3e-3, publish_every=1), published)
    trainers.append(t)
    t.start()
    worker_idle(t, 3 * CHUNK)
    w = decode_weights(published[0].data, published[0].sha256, 1 << 30)  # after pretraining and one RL update
    actor = build_actor(w.arch["actor"])
    actor.load_state_dict(w.tensors)
    demo = buf.demos.storage.data  # type: ignore[union-attr]
    obs, target = torch.from_numpy(demo["obs"][:128]), torch.from_numpy(demo["action"][:128])
    fresh = SAC(6, 4, SACConfig(hidden=(32, 32)))
    before = (fresh.actor.act(obs, deterministic=True) - target).pow(2).sum(-1).mean().item()
    after = (actor.act(obs, deterministic=True) - target).pow(2).sum(-1).mean().item()
    assert after < 0.5 * before, (before, after)


# ------------------------------------------------------------------ checkpoints


def _torch_batch(buf: ReplayBuffer, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in MixedSource(buf, fraction).sample(64, np.random.default_rng(seed)).items()}


@pytest.mark.parametrize("algorithm", ["rlpd", "bc"])
def test_checkpoint_resume_gives_the_identical_next_update(tmp_path: Path, algorithm: str) -> None:
    buf = _buffer(tmp_path / "buffer")
    seq = _write(buf, 1, 3, demo=True)
    _write(buf, seq, 3)
    fraction = 0.5 if algorithm == "rlpd" else 1.0

    def make(seed: int) -> SAC | BC:
        cfg = SACConfig(hidden=(32, 32), critics=10, critic_subset=2, critic_layer_norm=True)
        return SAC(6, 4, cfg, seed=seed) if algorithm == "rlpd" else BC(6, 4, cfg, seed=seed)

    algo = make(1)
    for i in range(4):
        algo.update(_torch_batch(buf, fraction, i))
    checkpoint.save(tmp_path / "ckpt.safetensors", {"sac": algo.state_dict()})
    expected = [algo.update(_torch_batch(buf, fraction, 10 + i)) for i in range(3)]
    restored = make(7)
    restored.load_state_dict(checkpoint.load(tmp_path / "ckpt.safetensors")["sac"])
    assert [restored.update(_torch_batch(buf, fraction, 10 + i)) for i in range(3)] == expected
    want = algo.actor_state()
    assert all(torch.equal(v, want[k]) for k, v in restored.actor_state().items())


def test_trainer_resumes_rlpd_exactly_and_refuses_another_algorithm(tmp_path: Path, trainers) -> None:
    ckpt = tmp_path / "learner.safetensors"
    buf = _buffer(tmp_path / "buffer")
    seq = _write(buf, 1, 2, demo=True)
    seq = _write(buf, seq, 3)
    cfg = _cfg(algorithm="rlpd", critics=4, critic_subset=2, critic_layer_norm=True, prefetch_batches=2)
    t = Trainer(buf, cfg, Published(), checkpoint_path=ckpt)
    trainers.append(t)
    t.start()
    worker_idle(t, 3 * CHUNK)
    t.stop()
    t.join(10)
    saved = checkpoint.load(ckpt)
    assert saved["algorithm"] == "rlpd"

    # the same run twice from the checkpoint: the same next policy
    blobs = []
    for i in range(2):
        again = _buffer(tmp_path / "buffer")
        if i == 0:
            _write(again, seq, 1)
        pub = Published()
        t2 = Trainer(again, cfg, pub, checkpoint_path=ckpt, resume=True, start_version=0)
        trainers.append(t2)
        t2.start()
        worker_idle(t2, 4 * CHUNK)
        t2.stop()
        t2.join(10)
        blobs.append(decode_weights(pub[-1].data, pub[-1].sha256, 1 << 30).tensors)
        if i == 0:
            checkpoint.save(ckpt, copy.deepcopy(saved))  # back to the first checkpoint
    assert all(torch.equal(blobs[0][k], v) for k, v in blobs[1].items())

    other = Trainer(_buffer(tmp_path / "buffer"), _cfg(algorithm="sac"), Published(), checkpoint_path=ckpt,
                    resume=True)
    other.start()
    other.join(30)
    assert isinstance(other.error, ConfigError)
    assert 'learner.algorithm was "rlpd", now "sac"' in str(other.error)


def test_demo_algorithms_are_refused_for_camera_runs(tmp_path: Path) -> None:
    """Camera runs keep no demo ring (frames live in the FrameRing): said at start, before any data."""
    for over in ({"algorithm": "rlpd"}, {"algorithm": "bc"}, {"algorithm": "hg_dagger"}, {"bc_pretrain_updates": 5}):
        t = Trainer(_buffer(tmp_path / "buffer"), _cfg(image_fields=["cam"], **over), Published())
        with pytest.raises(ConfigError, match="needs demonstrations, which this build keeps for state-only runs"):
            t.start()
        assert not t.is_alive()
    with pytest.raises(ConfigError, match="learner.demo_paths: demonstrations are kept for state-only runs"):
        ReplayBuffer(tmp_path / "cams", 10, image_fields=["cam"], demo_capacity=10, demo_paths=[tmp_path])


# ------------------------------------------------------------------ rewards


def test_human_reward_is_what_the_algorithm_trains_on(tmp_path: Path, trainers, monkeypatch) -> None:
    buf = _buffer(tmp_path / "buffer", demo_capacity=0)
    _write(buf, 1, 3)  # env reward -1 everywhere, human labels in [0, 1)
    seen: list[dict[str, torch.Tensor]] = []
    _spy(monkeypatch, SAC, seen)
    t = Trainer(buf, _cfg(reward="human"), Published())
    trainers.append(t)
    t.start()
    worker_idle(t, 3 * CHUNK)
    assert len(seen) == 3 * CHUNK
    for b in seen:
        assert torch.equal(b["reward"], b["human_reward"]) and (b["reward"] >= 0).all()
