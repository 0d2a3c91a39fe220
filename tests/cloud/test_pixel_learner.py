"""The pixel learner: device choice, random-shift augmentation, DrQ-style SAC over a
shared conv encoder, and the trainer over a real image replay buffer on disk."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cloud.buffer import ReplayBuffer
from cloud.learner import checkpoint
from cloud.learner.augment import random_shift, shift, shift_offsets
from shared.devices import resolve_device
from cloud.learner.sac import SAC, SACConfig
from cloud.learner.trainer import Trainer
from harness import wait_for, worker_idle
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError
from shared.policy import build_actor
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import WeightsBlob, decode_weights, encode_weights

CUDA = torch.cuda.is_available()
NO_CUDA = "torch sees no CUDA GPU on this machine (CPU build or no device)"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- device


def test_auto_takes_a_gpu_when_torch_sees_one_else_the_cpu(caplog) -> None:
    with caplog.at_level(logging.INFO, "fleetrl.device"):
        dev = resolve_device("auto")
    assert dev.type == ("cuda" if CUDA else "cpu")
    assert "event=device key=learner.device" in caplog.text and ("auto_cuda_available" if CUDA else "auto_no_cuda") in caplog.text
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="this machine has a GPU: the refusal is for machines without one")
@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_is_refused_with_a_clear_error_when_torch_sees_no_gpu(setting: str) -> None:
    with pytest.raises(ConfigError, match=rf'learner.device = "{setting}" but torch .* sees no CUDA GPU'):
        resolve_device(setting)


def test_a_device_index_beyond_the_count_or_a_bad_name_is_refused() -> None:
    beyond = f"cuda:{torch.cuda.device_count() if CUDA else 5}"
    with pytest.raises(ConfigError, match="learner.device"):
        resolve_device(beyond)
    for bad in ("tpu", "cuda:x", "gpu"):
        with pytest.raises(ConfigError, match=f'learner.device = "{bad}"'):
            resolve_device(bad)


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_cuda_trains_and_checkpoints_resume_across_devices(tmp_path: Path) -> None:
    gpu = _pixel_sac(seed=1, device="cuda")
    assert next(gpu.actor.parameters()).device.type == "cuda"
    for i in range(3):
        out = gpu.update(_pixel_batch(seed=i))  # CPU uint8 frames in, converted on the device
        assert all(np.isfinite(v) for v in out.values())
    checkpoint.save(tmp_path / "ckpt", {"sac": gpu.state_dict()})
    cpu = _pixel_sac(seed=9, device="cpu")
    cpu.load_state_dict(checkpoint.load(tmp_path / "ckpt")["sac"])
    for k, v in gpu.actor_state().items():
        assert torch.equal(cpu.actor_state()[k], v)
    assert cpu.updates == 3 and np.isfinite(cpu.update(_pixel_batch(seed=5))["critic_loss"])
    checkpoint.save(tmp_path / "ckpt2", {"sac": cpu.state_dict()})
    back = _pixel_sac(seed=9, device="cuda")
    back.load_state_dict(checkpoint.load(tmp_path / "ckpt2")["sac"])
    assert np.isfinite(back.update(_pixel_batch(seed=6))["critic_loss"])


# ---------------------------------------------------------------- augmentation


def _coords(n: int, h: int, w: int) -> torch.Tensor:
    """uint8 NHWC frames whose pixel (i, j) holds (i, j, sample index): a shift is readable from the values."""
    i = torch.arange(h).view(1, h, 1).expand(n, h, w)
    j = torch.arange(w).view(1, 1, w).expand(n, h, w)
    b = torch.arange(n).view(n, 1, 1).expand(n, h, w)
    return torch.stack([i, j, b], -1).to(torch.uint8)


@pytest.mark.parametrize("dtype,layout", [(torch.uint8, "NHWC"), (torch.float32, "NHWC"), (torch.float32, "NCHW"),
                                          (torch.uint8, "NCHW")])
def test_random_shift_keeps_shape_dtype_and_device(dtype: torch.dtype, layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 12, 9, 3), generator=g).to(dtype)
    if layout == "NCHW":
        x = x.permute(0, 3, 1, 2).contiguous()
    out = random_shift(x, 3, g, layout)  # type: ignore[arg-type]
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    off = random_shift(x, 0, g, layout)  # type: ignore[arg-type]
    assert off is x, "pad 0: augmentation off, the very same tensor"


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_shift_equals_replicate_pad_then_crop(layout: str) -> None:
    """The gather is exactly DrQ's pad-and-crop, at every offset in the pad range."""
    pad, n = 3, 7
    g = torch.Generator().manual_seed(1)
    nchw = torch.randint(0, 256, (n, 3, 10, 11), generator=g).float()
    offsets = torch.tensor([[-3, -3], [3, 3], [0, 0], [-3, 2], [1, -2], [2, 0], [0, -1]])
    padded = F.pad(nchw, (pad, pad, pad, pad), mode="replicate")
    want = torch.stack([padded[b, :, pad + dy: pad + dy + 10, pad + dx: pad + dx + 11]
                        for b, (dy, dx) in enumerate(offsets.tolist())])
    x = nchw if layout == "NCHW" else nchw.permute(0, 2, 3, 1).contiguous()
    got = shift(x, offsets, layout)  # type: ignore[arg-type]
    got = got if layout == "NCHW" else got.permute(0, 3, 1, 2)
    assert torch.equal(got, want)
    got8 = shift(x.to(torch.uint8), offsets, layout)  # type: ignore[arg-type]
    assert got8.dtype == torch.uint8 and torch.equal((got8 if layout == "NCHW" else got8.permute(0, 3, 1, 2)).float(), want)


def test_random_shifts_are_per_sample_within_pad_and_reproducible() -> None:
    pad, n, h, w = 2, 300, 16, 16
    x = _coords(n, h, w)
    out = random_shift(x, pad, torch.Generator().manual_seed(7))
    assert torch.equal(out[..., 2], x[..., 2]), "each sample keeps its own pixels"
    # away from the replicated border every pixel moved by the same (dy, dx)
    dy = out[:, pad:-pad, pad:-pad, 0].long() - x[:, pad:-pad, pad:-pad, 0].long()
    dx = out[:, pad:-pad, pad:-pad, 1].long() - x[:, pad:-pad, pad:-pad, 1].long()
    per_sample = torch.stack([dy[:, 0, 0], dx[:, 0, 0]], 1)
    assert (dy == per_sample[:, :1, None]).all() and (dx == per_sample[:, 1:, None]).all()
    assert per_sample.abs().max() <= pad
    assert set(per_sample.flatten().tolist()) == set(range(-pad, pad + 1)), "every offset in the pad range occurs"
    assert len({tuple(r) for r in per_sample.tolist()}) > 10, "offsets differ between samples"
    assert out.min() >= 0 and int(out[..., 0].max()) == h - 1, "borders replicate real pixels, never zeros"
    assert torch.equal(random_shift(x, pad, torch.Generator().manual_seed(7)), out)
    assert not torch.equal(random_shift(x, pad, torch.Generator().manual_seed(8)), out)


def test_augmentation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pad"):
        random_shift(torch.zeros(2, 4, 4, 3), -1)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        random_shift(torch.zeros(4, 4, 3), 2)
    with pytest.raises(ValueError, match="offsets"):
        shift(torch.zeros(2, 4, 4, 3), shift_offsets(3, 1, torch.device("cpu")))


# ---------------------------------------------------------------- pixel SAC

H = W = 16
VIEWS = (("front", (H, W, 3)), ("top", (H, W, 3)))
OBS_DIM, ACT_DIM = 3, 2


def _pixel_sac(seed: int = 0, device: str = "cpu", **kw) -> SAC:
    cfg = SACConfig(hidden=(32, 32), batch_size=16, images=VIEWS, encoder_channels=(8, 8), encoder_latent=16,
                    augment_pad=2, **kw)
    return SAC(OBS_DIM, ACT_DIM, cfg, device=device, seed=seed)


def _pixel_batch(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "obs": torch.randn(n, OBS_DIM, generator=g),
        "action": torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, OBS_DIM, generator=g),
        "terminated": (torch.rand(n, generator=g) < 0.1).float(),
    }
    for name, (h, w, c) in VIEWS:
        for prefix in ("images.", "next_images."):
            batch[prefix + name] = torch.randint(0, 256, (n, h, w, c), generator=g, dtype=torch.uint8)
    return batch


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str = "") -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_pixel_update_trains_encoder_actor_and_critics() -> None:
    sac = _pixel_sac()
    assert sac.actor.arch()["kind"] == "cnn_gaussian" and sac.encoder is not None
    assert sac.critic.weights[0].shape[1] == sac.encoder.feature_dim + OBS_DIM + ACT_DIM == 2 * 16 + 3 + 2
    actor0, critic0 = copy.deepcopy(sac.actor.state_dict()), copy.deepcopy(sac.critic.state_dict())
    target0 = copy.deepcopy(sac.critic_target.state_dict())
    out = sac.update(_pixel_batch())
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())
    actor1 = sac.actor.state_dict()
    assert _changed(actor0, actor1, "encoder.") and _changed(actor0, actor1, "head.") and _changed(actor0, actor1, "trunk.")
    assert _changed(critic0, sac.critic.state_dict()) and _changed(target0, sac.critic_target.state_dict())


def test_the_encoder_learns_from_the_critic_loss_only() -> None:
    sac = _pixel_sac()
    assert sac.encoder is not None
    critic_loss, actor_loss, alpha_loss, _ = sac.losses(_pixel_batch())
    (actor_loss + alpha_loss).backward(retain_graph=True)
    enc = list(sac.encoder.parameters())
    assert all(p.grad is None or not p.grad.any() for p in enc), "actor/alpha losses reached the encoder"
    head = dict(sac.actor.named_parameters())["head.weight"]
    assert head.grad is not None and head.grad.any(), "the actor loss trains the actor's head"
    assert all(p.grad is None or not p.grad.any() for p in sac.critic.parameters()), "actor loss moved the critic"
    critic_loss.backward()
    assert all(p.grad is not None for p in enc) and sum(bool(p.grad.any()) for p in enc if p.grad is not None) == len(enc)


def test_pixel_policy_learns_a_goal_seen_only_in_the_images() -> None:
    """A one-step task whose answer is only in the frames (a bright patch left or right):
    the actor reads detached features, so it can only succeed if the critic trained the encoder."""
    g = torch.Generator().manual_seed(1)

    def frames(side: torch.Tensor) -> torch.Tensor:
        x = torch.randint(0, 60, (side.shape[0], H, W, 3), generator=g, dtype=torch.uint8)
        for b, s in enumerate(side.tolist()):
            x[b, 5:11, (2 if s == 0 else 9):(8 if s == 0 else 15), :] = 255
        return x

    cfg = SACConfig(hidden=(32, 32), init_alpha=0.01, images=(("cam", (H, W, 3)),), encoder_channels=(8, 8),
                    encoder_latent=16, augment_pad=1)
    sac = SAC(2, 1, cfg, seed=0)
    test_side = torch.randint(0, 2, (128,), generator=g)
    test_images, goal = {"cam": frames(test_side)}, (test_side.float() * 1.6 - 0.8).unsqueeze(1)

    def err() -> float:
        return (sac.actor.act(torch.zeros(128, 2), deterministic=True, images=test_images) - goal).pow(2).mean().item()

    initial = err()
    for _ in range(250):
        side = torch.randint(0, 2, (64,), generator=g)
        img, action = frames(side), torch.rand(64, 1, generator=g) * 2 - 1
        reward = -(action - (side.float() * 1.6 - 0.8).unsqueeze(1)).pow(2).sum(-1)
        sac.update({"obs": torch.zeros(64, 2), "next_obs": torch.zeros(64, 2), "action": action, "reward": reward,
                    "terminated": torch.ones(64), "images.cam": img, "next_images.cam": img})
    final = err()
    assert initial > 0.3 and final < 0.1, (initial, final)


def test_pixel_checkpoint_resumes_bit_exactly(tmp_path: Path) -> None:
    sac = _pixel_sac(seed=1)
    for i in range(3):
        sac.update(_pixel_batch(seed=i))
    state = sac.state_dict()
    assert any(k.startswith("encoder.") for k in state["actor"]), "the encoder rides in the checkpoint"
    checkpoint.save(tmp_path / "learner.safetensors", {"sac": state})
    expected = [sac.update(_pixel_batch(seed=10 + i)) for i in range(3)]
    restored = _pixel_sac(seed=99)
    torch.manual_seed(0)
    restored.load_state_dict(checkpoint.load(tmp_path / "learner.safetensors")["sac"])
    assert [restored.update(_pixel_batch(seed=10 + i)) for i in range(3)] == expected
    for k, v in sac.actor_state().items():
        assert torch.equal(restored.actor_state()[k], v), k
    for k, v in sac.critic_target.state_dict().items():
        assert torch.equal(restored.critic_target.state_dict()[k], v), k


def test_load_state_dict_rejects_another_architecture() -> None:
    state = _pixel_sac().state_dict()
    other = SAC(OBS_DIM, ACT_DIM, SACConfig(hidden=(32, 32), images=VIEWS, encoder_channels=(8, 8, 8),
                                             encoder_latent=16))
    with pytest.raises(ValueError, match="arch"):
        other.load_state_dict(state)


def test_a_batch_without_the_cameras_the_actor_sees_is_a_clear_error() -> None:
    batch = _pixel_batch()
    del batch["next_images.top"]
    with pytest.raises(ValueError, match="next_images.top"):
        _pixel_sac().update(batch)


def test_published_pixel_policy_rebuilds_on_a_robot_and_acts_the_same() -> None:
    sac = _pixel_sac()
    sac.update(_pixel_batch())
    blob = encode_weights(sac.actor_state(), 1, {"actor": sac.actor.arch(), "obs_fields": ["q"]})
    weights = decode_weights(blob.data, blob.sha256, 1 << 30)
    robot = build_actor(weights.arch["actor"])
    robot.load_state_dict(weights.tensors)
    b = _pixel_batch(n=4, seed=3)
    images = {name: b["images." + name] for name, _ in VIEWS}
    assert torch.equal(robot.act(b["obs"], True, images), sac.actor.act(b["obs"], True, images))


def test_encoder_weights_file_loads_with_or_without_the_actor_prefix(tmp_path: Path) -> None:
    donor, sac = _pixel_sac(seed=5), _pixel_sac(seed=6)
    assert donor.encoder is not None and sac.encoder is not None
    save_file({f"encoder.{k}": v for k, v in donor.encoder.state_dict().items()}, str(tmp_path / "a.safetensors"))
    save_file(dict(donor.encoder.state_dict()), str(tmp_path / "b.safetensors"))
    for f in ("a", "b"):
        fresh = _pixel_sac(seed=6)
        assert fresh.encoder is not None
        assert checkpoint.load_encoder_weights(tmp_path / f"{f}.safetensors", fresh.encoder) > 0
        for k, v in donor.encoder.state_dict().items():
            assert torch.equal(fresh.encoder.state_dict()[k], v)
    wrong = {k: v for k, v in donor.encoder.state_dict().items() if "stacks.1" not in k}
    wrong["stacks.0.proj.weight"] = torch.zeros(3, 3)
    save_file(wrong, str(tmp_path / "c.safetensors"))
    with pytest.raises(ConfigError, match=r"learner.encoder_weights .* missing .*stacks\.1.*shape mismatch"):
        checkpoint.load_encoder_weights(tmp_path / "c.safetensors", sac.encoder)
    with pytest.raises(ConfigError, match="no such file"):
        checkpoint.load_encoder_weights(tmp_path / "nope.safetensors", sac.encoder)
    (tmp_path / "d.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        checkpoint.load_encoder_weights(tmp_path / "d.safetensors", sac.encoder)


# ---------------------------------------------------------------- trainer over a real image buffer

SPEC = EpisodeSpec(
    observation={"q": FieldSpec((3,)), "front": FieldSpec((H, W, 3), "uint8", codec="raw"),
                 "top": FieldSpec((H, W, 3), "uint8", codec="png")},
    action_dim=2, action_low=(-1.0,) * 2, action_high=(1.0,) * 2,
)
CHUNK = 10


def _cfg(**over) -> LearnerAlgoConfig:
    base = {"learning_starts": 40, "publish_every": 5, "batch_size": 8, "hidden": [8, 8], "utd_ratio": 1.0,
            "checkpoint_every": 10**6, "memory_capacity": 10_000, "threads": 1, "device": "cpu",
            "image_fields": ["front", "top"], "encoder_channels": [4, 4], "encoder_latent": 8, "augment_pad": 2}
    return LearnerAlgoConfig(**{**base, **over})


def _buffer(root: Path, cameras: tuple[str, ...] = ("front", "top")) -> ReplayBuffer:
    buf = ReplayBuffer(root / "buffer", memory_capacity=10_000, image_fields=list(cameras))
    buf.check_spec(SPEC)
    return buf


def _write(buf: ReplayBuffer, first_seq: int, chunks: int) -> int:
    """``chunks`` chunks of one episode each (CHUNK steps, consecutive frames); the next stream seq."""
    rng = np.random.default_rng(first_seq)
    for seq in range(first_seq, first_seq + chunks):
        obs = [{k: (rng.integers(0, 256, f.shape, dtype=np.uint8) if f.is_image
                    else rng.normal(size=f.shape).astype(np.float32)) for k, f in SPEC.observation.items()}
               for _ in range(CHUNK + 1)]
        steps = [StepRecord(obs[i], rng.uniform(-1, 1, 2).astype(np.float32), -1.0, obs[i + 1], False,
                            i == CHUNK - 1, step=i) for i in range(CHUNK)]
        buf.write([("arm", seq, build_batch(SPEC, "arm", f"arm-{seq}", steps))])
    return first_seq + chunks


class Published(list):
    def __call__(self, blob: WeightsBlob) -> None:
        self.append(blob)






def _start(trainers: list[Trainer], *args, **kw) -> Trainer:
    t = Trainer(*args, **kw)
    trainers.append(t)
    t.start()
    return t


def test_cnn_trainer_publishes_a_camera_policy_robots_rebuild(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path)
    _write(buf, 1, 4)
    published = Published()
    t = _start(trainers, buf, _cfg(), published)
    worker_idle(t, 40)
    assert [b.version for b in published] == list(range(1, 9)) and t.device == torch.device("cpu")
    w = decode_weights(published[-1].data, published[-1].sha256, 1 << 30)
    assert w.arch["obs_fields"] == ["q"]
    arch = w.arch["actor"]
    assert arch["kind"] == "cnn_gaussian" and arch["images"] == [["front", H, W, 3], ["top", H, W, 3]]
    assert (arch["channels"], arch["latent"], arch["obs_dim"], arch["act_dim"]) == ([4, 4], 8, 3, 2)
    robot = build_actor(arch)
    robot.load_state_dict(w.tensors)
    b = buf.sample(5, np.random.default_rng(0))
    a = robot.act(torch.from_numpy(b["obs"]), True, {f: torch.from_numpy(b["images." + f]) for f in ("front", "top")})
    assert a.shape == (5, 2) and a.abs().max() <= 1


def test_a_camera_the_buffer_does_not_serve_is_a_clear_trainer_error(tmp_path: Path, trainers, caplog) -> None:
    buf = _buffer(tmp_path, cameras=("front",))
    _write(buf, 1, 4)
    published = Published()
    with caplog.at_level(logging.ERROR, "fleetrl.trainer"):
        t = _start(trainers, buf, _cfg(), published)
        wait_for(lambda: t.error is not None, 60, "the trainer to refuse the config")
    assert isinstance(t.error, ConfigError) and "['top']" in str(t.error) and "learner.image_fields" in str(t.error)
    assert "event=trainer_config_error" in caplog.text and published == []


def test_encoder_weights_seed_the_encoder_and_a_misfit_file_stops_the_trainer(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path)
    _write(buf, 1, 4)
    cfg = _cfg(publish_every=1)
    probe = SAC(3, 2, Trainer(buf, cfg, Published())._sac_config(buf.dims), seed=cfg.seed)  # type: ignore[arg-type]
    assert probe.encoder is not None
    given = {k: v + 1.0 for k, v in probe.encoder.state_dict().items()}  # plainly not what a fresh init gives
    save_file(given, str(tmp_path / "enc.safetensors"))
    published = Published()
    t = _start(trainers, buf, _cfg(publish_every=1, encoder_weights=tmp_path / "enc.safetensors"), published)
    worker_idle(t, 40)
    first = decode_weights(published[0].data, published[0].sha256, 1 << 30).tensors  # after one Adam step
    for k, v in given.items():
        assert (first["encoder." + k] - v).abs().max() <= 1.5 * cfg.lr, k

    save_file({k: v for k, v in given.items() if "stacks.1" not in k}, str(tmp_path / "half.safetensors"))
    bad = _start(trainers, buf, _cfg(encoder_weights=tmp_path / "half.safetensors"), Published())
    wait_for(lambda: bad.error is not None, 60, "the trainer to refuse the encoder file")
    assert isinstance(bad.error, ConfigError) and "encoder_weights" in str(bad.error) and "missing" in str(bad.error)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_checkpoint_holds_the_sampler_state_of_the_batches_trained_on(tmp_path: Path, trainers, prefetch: int) -> None:
    """Batches a prefetcher drew ahead are not counted: --resume draws exactly the next batch."""
    buf = _buffer(tmp_path)
    _write(buf, 1, 4)
    ckpt = tmp_path / "learner.safetensors"
    t = _start(trainers, buf, _cfg(prefetch_batches=prefetch), Published(), checkpoint_path=ckpt)
    worker_idle(t, 40)
    t.stop()
    t.join(10)
    rng = np.random.default_rng(_cfg().seed)
    for _ in range(40):
        buf.sample(8, rng)
    assert checkpoint.load(ckpt)["rng"] == rng.bit_generator.state


def test_stop_and_resume_trains_exactly_as_an_uninterrupted_run(tmp_path: Path, trainers) -> None:
    """Without batches drawn ahead (prefetch 0) a resumed CNN run is bit-identical to one never stopped."""
    runs = {}
    for name in ("straight", "resumed"):
        root = tmp_path / name
        buf, ckpt, published = _buffer(root), root / "learner.safetensors", Published()
        seq = _write(buf, 1, 4)
        t = _start(trainers, buf, _cfg(prefetch_batches=0), published, checkpoint_path=ckpt)
        worker_idle(t, 40)
        if name == "resumed":
            t.stop()
            t.join(10)
            buf = ReplayBuffer(root / "buffer", memory_capacity=10_000, image_fields=["front", "top"])
            t = _start(trainers, buf, _cfg(prefetch_batches=0), published, start_version=published[-1].version,
                       checkpoint_path=ckpt, resume=True)
            worker_idle(t, 40)
            assert t.resumed_from == 40
        _write(buf, seq, 2)
        t.notify_data()
        worker_idle(t, 60)
        runs[name] = decode_weights(published[-1].data, published[-1].sha256, 1 << 30)
    assert runs["straight"].version == runs["resumed"].version == 12
    for k, v in runs["straight"].tensors.items():
        assert torch.equal(runs["resumed"].tensors[k], v), k


def test_resume_without_checkpoint_continues_from_the_published_cnn_policy(tmp_path: Path, trainers) -> None:
    buf = _buffer(tmp_path)
    _write(buf, 1, 4)
    first = Published()
    t = _start(trainers, buf, _cfg(), first)
    worker_idle(t, 40)
    t.stop()
    t.join(10)
    newest = first[-1]
    t2 = _start(trainers, buf, _cfg(learning_starts=10), Published(), start_version=newest.version, resume=True,
                checkpoint_path=tmp_path / "none.safetensors", published=newest)
    worker_idle(t2, 40)
    assert t2.resumed_from_policy == newest.version
    # a policy of another shape (here: another latent) is not loaded: training goes on without it, and says so
    t3 = _start(trainers, buf, _cfg(learning_starts=10, encoder_latent=6), Published(), start_version=newest.version,
                resume=True, checkpoint_path=tmp_path / "none.safetensors", published=newest)
    worker_idle(t3, 40)
    assert t3.resumed_from_policy is None
