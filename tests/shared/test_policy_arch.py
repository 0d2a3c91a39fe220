"""The registry of policy architectures: mlp_gaussian and cnn_gaussian, through the weights
format and the robot's rebuild, on real torch modules, real safetensors blobs and real frames."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from shared.errors import WeightsError
from shared.observations import flatten_batch, state_sizes
from shared.policy import (
    Actor,
    ArchTooLarge,
    CNNActor,
    GaussianActor,
    ImageEncoder,
    actor_images,
    actor_shapes,
    build_actor,
    param_count,
)
from shared.observations import image_shapes
from shared.policy_runner import load_policy
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import decode_weights, encode_weights

SPEC = EpisodeSpec(
    {
        "joints": FieldSpec((3,)),
        "goal": FieldSpec((2,)),
        "front": FieldSpec((16, 16, 3), "uint8", codec="raw"),
        "wrist": FieldSpec((12, 20, 1), "uint8", codec="png"),
    },
    action_dim=2,
)
VIEWS = [("wrist", (12, 20, 1)), ("front", (16, 16, 3))]  # not the spec's order: the arch's order rules


def _obs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"joints": rng.normal(size=3).astype(np.float32), "goal": rng.normal(size=2).astype(np.float32),
            "front": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (12, 20, 1), dtype=np.uint8)}


def _actor(kind: str, obs_dim: int = 5) -> GaussianActor:
    torch.manual_seed(7)
    if kind == "mlp":
        return Actor(obs_dim, 2, hidden=(16, 8))
    return CNNActor(obs_dim, 2, hidden=(16,), views=VIEWS, channels=(4, 6), latent=5)


def _load(actor: GaussianActor, obs_fields: list[str], image_fields=None, version: int = 3):
    blob = encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": obs_fields})
    w = decode_weights(blob.data, blob.sha256, 1 << 26)
    cams = image_shapes(SPEC) if image_fields is None else image_fields
    return load_policy(w, state_sizes(SPEC), 2, max_params=1_000_000, image_fields=cams)


def _tensors(obs: list[dict[str, np.ndarray]], fields: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.from_numpy(flatten_batch(obs, fields)) if fields else torch.zeros(len(obs), 0)
    return x, {k: torch.from_numpy(np.stack([o[k] for o in obs])) for k in ("front", "wrist")}


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("kind, fields", [("mlp", ["goal", "joints"]), ("cnn", ["goal", "joints"]), ("cnn", [])],
                         ids=["mlp", "cnn", "cnn_pixels_only"])
def test_arch_round_trip_through_weights_and_robot_rebuild(kind: str, fields: list[str]) -> None:
    actor = _actor(kind, obs_dim=5 if fields else 0)
    p = _load(actor, fields)
    assert type(p.actor) is type(actor) and p.actor.arch() == actor.arch()
    assert p.obs_fields == tuple(fields)
    assert p.image_fields == (() if kind == "mlp" else ("wrist", "front"))
    rng = np.random.default_rng(1)
    obs = [_obs(rng) for _ in range(5)]
    x, images = _tensors(obs, fields)
    images_in = images if kind == "cnn" else None
    expect = actor.act(x, deterministic=True, images=images_in).numpy()
    got = p.act_batch(obs, deterministic=True)
    assert np.abs(expect).max() > 0  # a network that ignores its input would pass too easily otherwise
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_allclose(p.act(obs[2], deterministic=True), expect[2], atol=1e-6)
    # the stochastic path too: same noise stream, same actions and log-probs
    a1, lp1 = actor.sample(x, torch.Generator().manual_seed(4), images=images_in)
    a2, lp2 = p.actor.sample(x, torch.Generator().manual_seed(4), images=images_in)
    assert torch.equal(a1, a2) and torch.equal(lp1, lp2)


def test_the_robot_acts_on_each_frame_it_is_given() -> None:
    p = _load(_actor("cnn"), ["goal", "joints"])
    obs = _obs(np.random.default_rng(2))
    a = p.act(obs, deterministic=True)
    other = {**obs, "front": 255 - obs["front"]}
    assert not np.allclose(p.act(other, deterministic=True), a)
    with pytest.raises(ValueError, match="front"):
        p.act({**obs, "front": obs["front"][:8]}, deterministic=True)


def test_read_only_frames_act_without_a_warning() -> None:
    p = _load(_actor("cnn"), ["goal", "joints"])
    obs = _obs(np.random.default_rng(3))
    for k in ("front", "wrist"):
        obs[k].flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert p.act(obs, deterministic=False).shape == (2,)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_actor_shapes_are_the_real_state_dict_shapes(kind: str) -> None:
    actor = _actor(kind)
    shapes = actor_shapes(actor.arch())
    assert shapes == {k: tuple(v.shape) for k, v in actor.state_dict().items()}
    assert param_count(shapes) == sum(p.numel() for p in actor.parameters())


def test_mlp_tensor_names_are_those_of_published_weights() -> None:
    assert list(actor_shapes(Actor(4, 2, (8, 8)).arch())) == [
        "trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "trunk.2.bias", "head.weight", "head.bias"]


def test_actor_images_lists_the_views_in_arch_order() -> None:
    assert actor_images(_actor("cnn").arch()) == VIEWS
    assert actor_images(_actor("mlp").arch()) == []


# ---------------------------------------------------------------- size limits without allocating


def _huge_cnn() -> dict:
    return {"kind": "cnn_gaussian", "version": 1, "obs_dim": 1 << 20, "act_dim": 1 << 20, "hidden": [1 << 20] * 64,
            # huge in parameters (the MLP and the projections), small in conv compute (a separate cap)
            "images": [[f"cam{i}", 24, 24, 4] for i in range(8)], "channels": [1024] * 4, "latent": 4096}


def test_shapes_of_a_huge_arch_come_without_allocating_it() -> None:
    arch = _huge_cnn()
    t0 = time.perf_counter()
    n = param_count(actor_shapes(arch))
    assert time.perf_counter() - t0 < 30  # a real build would need petabytes; on meta it is bookkeeping
    assert n > 64 * (1 << 40)
    with pytest.raises(ValueError, match="more than the limit 1000000"):
        build_actor(arch, max_params=1_000_000)


def test_a_robot_refuses_a_huge_arch_as_too_large_before_building(monkeypatch) -> None:
    import shared.policy_runner as runner

    def no_build(*a, **k):
        raise AssertionError("built a network for an arch past the robot's limit")

    monkeypatch.setattr(runner, "build_actor", no_build)
    w = decode_weights(*(lambda b: (b.data, b.sha256))(encode_weights({}, 2, {"actor": _huge_cnn(), "obs_fields": []})),
                       1 << 20)
    with pytest.raises(WeightsError) as e:
        load_policy(w, state_sizes(SPEC), 2, max_params=200_000_000, image_fields=image_shapes(SPEC))
    assert e.value.code == "too_large"
    bomb = {"kind": "mlp_gaussian", "version": 1, "obs_dim": 5, "act_dim": 2, "hidden": [2**40, 2**40]}
    with pytest.raises(ArchTooLarge):
        actor_shapes(bomb)


# ---------------------------------------------------------------- bad arch dicts


def _cnn_arch(**patch) -> dict:
    return {**_actor("cnn").arch(), **patch}


@pytest.mark.parametrize(
    "arch, match",
    [
        ({"kind": "transformer", "version": 1}, "unknown policy arch kind 'transformer'"),
        (_cnn_arch(version=2), "unsupported policy arch version 2 for kind 'cnn_gaussian'"),
        (_cnn_arch(version=True), "version"),
        (_cnn_arch(images=[]), "images"),
        (_cnn_arch(images=[["front", 16, 16, 3]] * 9), "images"),
        (_cnn_arch(images=[["front", 16, 16]]), "view must be"),
        (_cnn_arch(images=[["a.b", 16, 16, 3]]), "view must be"),
        (_cnn_arch(images=[["", 16, 16, 3]]), "view must be"),
        (_cnn_arch(images=[["front", 4, 16, 3]]), "'front' is 4x16"),
        (_cnn_arch(images=[["front", 16, 2048, 3]]), "'front' is 16x2048"),
        (_cnn_arch(images=[["front", 16, 16, 2]]), "2 channels"),
        (_cnn_arch(images=[["front", 16, 16, 3], ["front", 16, 16, 3]]), "listed twice"),
        (_cnn_arch(images=[["front", 16, 16.0, 3]]), "view must be"),
        (_cnn_arch(images=[["front", 8, 8, 3]], channels=[4, 4, 4]), "too small for 3 conv layers"),
        (_cnn_arch(channels=[]), "at least one conv layer"),
        (_cnn_arch(channels=[4] * 9), "9 conv layers"),
        (_cnn_arch(channels=[4, 2048]), "channels"),
        (_cnn_arch(latent=0), "latent"),
        (_cnn_arch(latent=5000), "latent"),
        (_cnn_arch(hidden=[8] * 65), "65 hidden layers"),
        (_cnn_arch(hidden=[8, 0]), "hidden"),
        (_cnn_arch(obs_dim=-1), "obs_dim"),
        (_cnn_arch(act_dim=0), "act_dim"),
        (_cnn_arch(act_dim=True), "act_dim"),
        ({**Actor(4, 2).arch(), "obs_dim": 0}, "obs_dim"),  # a state-only policy must read some state
        ([1, 2], "must be a dict"),
    ],
)
def test_bad_arch_dicts_are_refused_naming_what_is_wrong(arch, match: str) -> None:
    for f in (actor_shapes, build_actor, actor_images):
        with pytest.raises(ValueError, match=match):
            f(arch)


def test_a_loader_reports_a_bad_arch_as_a_weights_error() -> None:
    actor = _actor("cnn")
    blob = encode_weights(actor.state_dict(), 3, {"actor": _cnn_arch(latent=0), "obs_fields": ["goal", "joints"]})
    with pytest.raises(WeightsError, match="unusable architecture.*latent"):
        load_policy(decode_weights(blob.data, blob.sha256, 1 << 26), state_sizes(SPEC), 2, 1_000_000,
                    image_fields=image_shapes(SPEC))


# ---------------------------------------------------------------- robot's cameras


@pytest.mark.parametrize(
    "cameras, match",
    [
        ({"front": (16, 16, 3)}, "camera 'wrist', which this robot does not have"),
        ({}, "camera 'wrist', which this robot does not have"),
        (None, "camera 'wrist', which this robot does not have"),
        ({"front": (16, 16, 3), "wrist": (12, 20, 3)}, "'wrist' as 12x20x1, this robot's is 12x20x3"),
        ({"front": (32, 32, 3), "wrist": (12, 20, 1)}, "'front' as 16x16x3, this robot's is 32x32x3"),
    ],
    ids=["missing", "no_cameras", "none_given", "channels", "size"],
)
def test_a_policy_reading_a_camera_the_robot_lacks_is_refused(cameras, match: str) -> None:
    actor = _actor("cnn")
    blob = encode_weights(actor.state_dict(), 3, {"actor": actor.arch(), "obs_fields": ["goal", "joints"]})
    w = decode_weights(blob.data, blob.sha256, 1 << 26)
    with pytest.raises(WeightsError, match=match):
        load_policy(w, state_sizes(SPEC), 2, 1_000_000, image_fields=cameras)


def test_image_shapes_lists_only_camera_fields() -> None:
    assert image_shapes(SPEC) == {"front": (16, 16, 3), "wrist": (12, 20, 1)}


# ---------------------------------------------------------------- encoder and actor


def test_encoder_features_are_bounded_and_sized() -> None:
    torch.manual_seed(0)
    enc = ImageEncoder(VIEWS, channels=(8, 8, 8), latent=7)
    assert enc.feature_dim == 14
    for fill in (0, 255, None):
        imgs = {n: (torch.randint(0, 256, (3, *hwc), dtype=torch.uint8) if fill is None
                    else torch.full((3, *hwc), fill, dtype=torch.uint8)) for n, hwc in VIEWS}
        f = enc(imgs)
        assert f.shape == (3, 14) and f.dtype == torch.float32
        assert f.abs().max() <= 1.0 and torch.isfinite(f).all()
    # uint8 and float frames in 0..255 are the same input (an augmentation may hand over floats)
    torch.testing.assert_close(enc({n: t.float() for n, t in imgs.items()}), enc(imgs))
    # each view feeds its own slice of the features, in view order
    f2 = enc({**imgs, "front": 255 - imgs["front"]})
    assert torch.equal(f2[:, :7], f[:, :7]) and not torch.allclose(f2[:, 7:], f[:, 7:])


def test_encoder_refuses_missing_and_misshapen_views() -> None:
    enc = ImageEncoder(VIEWS, channels=(4,), latent=3)
    ok = {n: torch.zeros((1, *hwc), dtype=torch.uint8) for n, hwc in VIEWS}
    with pytest.raises(ValueError, match="'front', which the input lacks"):
        enc({"wrist": ok["wrist"]})
    with pytest.raises(ValueError, match=r"'wrist' must be \[B, 12, 20, 1\]"):
        enc({**ok, "wrist": torch.zeros((1, 20, 12, 1), dtype=torch.uint8)})
    with pytest.raises(ValueError, match="too small"):
        ImageEncoder([("tiny", (8, 8, 3))], channels=(4, 4, 4), latent=3)


def test_actor_forward_is_encoder_then_features() -> None:
    actor = _actor("cnn")
    assert isinstance(actor, CNNActor)
    rng = np.random.default_rng(4)
    x, images = _tensors([_obs(rng) for _ in range(4)], ["goal", "joints"])
    mean, log_std = actor(x, images)
    m2, s2 = actor.forward_features(actor.encoder(images), x)
    assert torch.equal(mean, m2) and torch.equal(log_std, s2)
    with pytest.raises(ValueError, match="needs images"):
        actor(x)


def test_mlp_actor_refuses_images() -> None:
    actor = Actor(5, 2, (8,))
    x = torch.zeros(1, 5)
    assert actor(x, {})[0].shape == (1, 2)
    with pytest.raises(ValueError, match="reads no images"):
        actor(x, {"front": torch.zeros((1, 16, 16, 3), dtype=torch.uint8)})


def test_sample_features_with_detached_features_leaves_the_encoder_alone() -> None:
    actor = _actor("cnn")
    assert isinstance(actor, CNNActor)
    rng = np.random.default_rng(5)
    x, images = _tensors([_obs(rng) for _ in range(6)], ["goal", "joints"])
    features = actor.encoder(images)

    def grads(feats: torch.Tensor) -> tuple[bool, bool]:
        actor.zero_grad(set_to_none=True)
        action, log_prob = actor.sample_features(feats, x, torch.Generator().manual_seed(0))
        (action.pow(2).sum() + log_prob.sum()).backward(retain_graph=True)
        enc = any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.encoder.parameters())
        rest = all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*actor.trunk.parameters(),
                                                                            *actor.head.parameters()])
        return enc, rest

    assert grads(features.detach()) == (False, True)
    assert grads(features) == (True, True)  # the check can fail: undetached features do reach the encoder


def test_sample_features_matches_sample_and_is_squashed() -> None:
    actor = _actor("cnn")
    assert isinstance(actor, CNNActor)
    rng = np.random.default_rng(6)
    x, images = _tensors([_obs(rng) for _ in range(64)], ["goal", "joints"])
    a1, lp1 = actor.sample(x, torch.Generator().manual_seed(1), images=images)
    a2, lp2 = actor.sample_features(actor.encoder(images), x, torch.Generator().manual_seed(1))
    assert torch.equal(a1, a2) and torch.equal(lp1, lp2)
    assert a1.abs().max() < 1 and torch.isfinite(lp1).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_cnn_actor_converts_cpu_frames_on_its_own_device() -> None:
    actor = _actor("cnn").to("cuda")
    rng = np.random.default_rng(7)
    x, images = _tensors([_obs(rng) for _ in range(3)], ["goal", "joints"])
    a = actor.act(x.cuda(), deterministic=True, images=images)  # frames stay uint8 on the host
    assert a.device.type == "cuda"
    cpu = actor.to("cpu").act(x, deterministic=True, images=images)
    torch.testing.assert_close(a.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_a_cnn_that_would_take_seconds_per_action_is_refused_as_too_large_before_it_is_built():
    """Parameters do not bound conv compute: a 480x640 camera through eight 1024-channel layers has fewer
    parameters than a robot's cap but ~5e12 multiply-adds per action; the arch check counts them."""
    from shared.policy.registry import MAX_CONV_MACS, ArchTooLarge, check_arch, conv_macs
    from shared.policy_runner import load_policy
    from shared.weights import Weights

    arch = {"kind": "cnn_gaussian", "version": 1, "obs_dim": 0, "act_dim": 4, "hidden": [], "latent": 1,
            "images": [["cam", 480, 640, 3]], "channels": [1024] * 8}
    assert conv_macs(480, 640, 3, [1024] * 8) > MAX_CONV_MACS
    with pytest.raises(ArchTooLarge, match="multiply-adds per action"):
        check_arch(arch)
    with pytest.raises(WeightsError) as e:
        load_policy(Weights(1, {"actor": arch, "obs_fields": []}, {}), {}, 4, 200_000_000,
                    image_fields={"cam": (480, 640, 3)})
    assert e.value.code == "too_large"
    small = {**arch, "images": [["cam", 64, 64, 3]], "channels": [32, 32, 32, 32]}  # what the demos train
    check_arch(small)


def test_each_kinds_arch_function_describes_the_actor_it_builds() -> None:
    """``mlp.arch`` and ``cnn.arch`` (what the learners and RL-Co build from) say what the built actor's own
    ``arch()`` says, so a published policy's arch is the one it was built from."""
    from shared.policy import build_gaussian, cnn, mlp

    for spec in (mlp.arch(5, 2, [16, 8]),
                 cnn.arch(3, 2, [16], [("front", (16, 16, 3)), ("wrist", (24, 24, 1))], [8, 8], 12)):
        assert build_gaussian(spec).arch() == spec
