"""The training thread in process, over a real replay buffer on disk: when it
starts, what it publishes, and how a checkpoint carries its counters over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.buffer import ReplayBuffer
from cloud.learner.trainer import Trainer
from harness import thread_parked, wait_for, worker_idle
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import WeightsBlob, decode_weights

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((3,))}, action_dim=4,
                   action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
CHUNK = 10  # rows per write


def _cfg(**over) -> LearnerAlgoConfig:
    base = {"learning_starts": 40, "publish_every": 5, "batch_size": 8, "hidden": [8, 8], "utd_ratio": 1.0,
            "checkpoint_every": 10**6, "memory_capacity": 10_000, "threads": 1}
    return LearnerAlgoConfig(**{**base, **over})


def _buffer(root: Path) -> ReplayBuffer:
    buf = ReplayBuffer(root / "buffer", memory_capacity=10_000)
    buf.check_spec(SPEC)
    return buf


def _write(buf: ReplayBuffer, first_seq: int, chunks: int, robot: str = "arm") -> int:
    """``chunks`` chunks of CHUNK rows from ``robot``, stream seqs from ``first_seq``; the next seq."""
    rng = np.random.default_rng(first_seq)
    for seq in range(first_seq, first_seq + chunks):
        steps = []
        for i in range(CHUNK):
            obs = {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()}
            nxt = {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()}
            steps.append(StepRecord(obs, rng.uniform(-1, 1, 4).astype(np.float32), -1.0, nxt, False, i == CHUNK - 1,
                                    step=i))
        buf.write([(robot, seq, build_batch(SPEC, robot, f"{robot}-{seq}", steps))])
    return first_seq + chunks


class Published(list):
    """The trainer's publish callback (called on its thread): every blob it handed out, in order."""

    def __call__(self, blob: WeightsBlob) -> None:
        self.append(blob)

    @property
    def versions(self) -> list[int]:
        return [b.version for b in self]






def test_waits_for_learning_starts_then_publishes_every_publish_every(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path)
    seq = _write(buf, 1, 3)  # 30 rows: under learning_starts
    published = Published()
    t = Trainer(buf, _cfg(), published)
    trainers.append(t)
    t.start()
    wait_for(lambda: thread_parked(t), 30, "the trainer to look at the buffer and wait")
    t.notify_data()  # a wake-up with still too little data changes nothing
    wait_for(lambda: thread_parked(t), 30, "the trainer to wait again")
    assert t.updates == 0 and published == [], "trained before learning_starts"

    _write(buf, seq, 1)  # 40 rows: training may start
    t.notify_data()
    worker_idle(t, 40)
    # utd_ratio 1: as many updates as rows received, then it waits for more data
    assert t.updates == 40
    assert published.versions == list(range(1, 9)), "one publish per publish_every (5) updates, versions 1, 2, ..."
    w = decode_weights(published[-1].data, published[-1].sha256, 1 << 30)
    assert w.version == 8 and w.arch["obs_fields"] == list(SPEC.observation)


def test_checkpoint_on_stop_and_resume_carries_updates_and_versions_on(tmp_path: Path, trainers) -> None:
    ckpt = tmp_path / "learner.safetensors"
    buf = _buffer(tmp_path)
    seq = _write(buf, 1, 4)
    first = Published()
    t = Trainer(buf, _cfg(checkpoint_every=15), first, checkpoint_path=ckpt)
    trainers.append(t)
    t.start()
    worker_idle(t, 40)
    assert ckpt.exists(), "checkpoint_every (15) updates passed"
    t.stop()
    t.join(10)
    assert not t.is_alive() and first.versions[-1] == 8

    again = ReplayBuffer(tmp_path / "buffer", memory_capacity=10_000)  # a restarted learner: the buffer from disk
    second = Published()
    t2 = Trainer(again, _cfg(), second, checkpoint_path=ckpt, resume=True)
    trainers.append(t2)
    t2.start()
    worker_idle(t2, 40)
    assert t2.resumed_from == 40 and t2.updates == 40, "the updates the stop saved"
    assert second == [], "nothing new to train on: nothing published"
    _write(again, seq, 1)
    t2.notify_data()
    worker_idle(t2, 50)
    assert second.versions == [9, 10], "versions go on from the checkpoint's, never reused"


def test_resume_continues_from_a_published_policy_newer_than_any_checkpoint(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path)
    _write(buf, 1, 4)
    first = Published()
    t = Trainer(buf, _cfg(), first)
    trainers.append(t)
    t.start()
    worker_idle(t, 40)
    t.stop()
    t.join(10)
    newest = first[-1]

    second = Published()
    t2 = Trainer(buf, _cfg(learning_starts=10), second, start_version=newest.version, resume=True,
                 checkpoint_path=tmp_path / "none.safetensors", published=newest)
    trainers.append(t2)
    t2.start()
    worker_idle(t2, 40)
    assert t2.resumed_from is None and t2.resumed_from_policy == newest.version
    assert second.versions == list(range(newest.version + 1, newest.version + 9))


def test_stop_while_waiting_for_data_ends_the_thread_without_a_checkpoint(tmp_path: Path) -> None:
    buf = ReplayBuffer(tmp_path / "buffer", memory_capacity=100)  # no robot yet: no spec, no rows
    ckpt = tmp_path / "learner.safetensors"
    t = Trainer(buf, _cfg(), Published(), checkpoint_path=ckpt)
    t.start()
    wait_for(lambda: thread_parked(t), 30, "the trainer to wait for data")
    t.stop()
    t.join(10)
    assert not t.is_alive() and t.error is None and not ckpt.exists()



@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the refusal is for machines without one")
def test_a_cuda_learner_without_a_gpu_is_refused_at_start_before_any_data(tmp_path: Path) -> None:
    """Training waits for learning_starts rows, possibly for hours: the device is checked when the learner starts."""
    buf = _buffer(tmp_path)  # no rows yet
    t = Trainer(buf, _cfg(device="cuda"), Published())
    with pytest.raises(ConfigError, match='learner.device = "cuda" but torch .* sees no CUDA GPU'):
        t.start()
    assert not t.is_alive()


def test_a_missing_encoder_weights_file_is_refused_at_start(tmp_path: Path) -> None:
    t = Trainer(_buffer(tmp_path), _cfg(encoder_weights=tmp_path / "nope.safetensors"), Published())
    with pytest.raises(ConfigError, match="learner.encoder_weights = .*nope.safetensors.*: no such file"):
        t.start()
    assert not t.is_alive()


@pytest.mark.parametrize("prefetch", [0, 3])
def test_prefetched_and_inline_sampling_train_the_same_policy(tmp_path: Path, trainers, prefetch: int) -> None:
    """The prefetcher draws the batches inline sampling would: same data, same seed, same weights."""
    buf = _buffer(tmp_path)
    _write(buf, 1, 4)
    published = Published()
    t = Trainer(buf, _cfg(prefetch_batches=prefetch, device="cpu"), published)
    trainers.append(t)
    t.start()
    worker_idle(t, 40)
    assert t.device == torch.device("cpu")
    got = decode_weights(published[-1].data, published[-1].sha256, 1 << 30).tensors
    ref_pub = Published()
    ref = Trainer(_buffer(tmp_path / "ref"), _cfg(prefetch_batches=0, device="cpu"), ref_pub)
    _write(ref.buffer, 1, 4)  # type: ignore[arg-type]
    trainers.append(ref)
    ref.start()
    worker_idle(ref, 40)
    want = decode_weights(ref_pub[-1].data, ref_pub[-1].sha256, 1 << 30).tensors
    assert all(torch.equal(got[k], v) for k, v in want.items())
