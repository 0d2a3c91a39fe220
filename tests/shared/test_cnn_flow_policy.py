"""The ``cnn_flow`` policy kind: the flow-matching chunk head over camera views, on real torch modules,
through the registry, the weights format and a robot's verified load with real frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.errors import WeightsError
from shared.observations import image_shapes, state_sizes
from shared.policy import (
    ArchTooLarge,
    CNNFlowActor,
    FlowActor,
    actor_images,
    actor_shapes,
    build_actor,
    build_gaussian,
    check_arch,
    param_count,
)
from shared.policy import cnn_flow
from shared.policy_runner import load_policy
from shared.weights import decode_weights, encode_weights

from .test_policy_arch import SPEC, VIEWS, _obs, _tensors

FIELDS = ["goal", "joints"]


def _actor(obs_dim: int = 5, seed: int = 7, **kw: object) -> CNNFlowActor:
    torch.manual_seed(seed)
    args: dict = {"horizon": 4, "hidden": (16, 16), "steps": 3, "channels": (4, 6), "latent": 5, **kw}
    return CNNFlowActor(obs_dim, 2, VIEWS, **args)


def _load(actor: FlowActor, fields: list[str], cameras=None):
    blob = encode_weights(actor.state_dict(), 3, {"actor": actor.arch(), "obs_fields": fields})
    w = decode_weights(blob.data, blob.sha256, 1 << 26)
    return load_policy(w, state_sizes(SPEC), 2, max_params=1_000_000,
                       image_fields=image_shapes(SPEC) if cameras is None else cameras)


def _arch(**over: object) -> dict:
    return {**cnn_flow.arch(5, 2, [16], 4, 3, VIEWS, [4, 6], 5), **over}


@pytest.mark.parametrize("fields", [FIELDS, []], ids=["state_and_cameras", "cameras_only"])
def test_round_trip_through_weights_and_robot_rebuild(fields: list[str]) -> None:
    actor = _actor(obs_dim=5 if fields else 0)
    p = _load(actor, fields)
    assert type(p.actor) is CNNFlowActor and p.actor.arch() == actor.arch()
    assert (p.obs_fields, p.image_fields, p.horizon) == (tuple(fields), ("wrist", "front"), 4)
    rng = np.random.default_rng(1)
    obs = [_obs(rng) for _ in range(5)]
    x, images = _tensors(obs, fields)
    expect = actor.sample(x, deterministic=True, images=images).numpy()
    got = p.act_chunk_batch(obs, deterministic=True)
    assert got.shape == (5, 4, 2) and np.abs(got).max() <= 1.0 and np.abs(expect).max() > 0
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(p.act_batch(obs, deterministic=True), expect[:, 0])
    np.testing.assert_allclose(p.act(obs[2], deterministic=True), expect[2, 0], atol=1e-6)


def test_the_chunk_follows_each_camera() -> None:
    p = _load(_actor(), FIELDS)
    obs = _obs(np.random.default_rng(2))
    chunk = p.act_chunk_batch([obs], deterministic=True)
    for cam in ("front", "wrist"):
        other = {**obs, cam: 255 - obs[cam]}
        assert not np.allclose(p.act_chunk_batch([other], deterministic=True), chunk), cam
    with pytest.raises(ValueError, match="front"):
        p.act({**obs, "front": obs["front"][:8]}, deterministic=True)


def test_frames_are_encoded_once_per_chunk_not_per_integration_step() -> None:
    actor = _actor(steps=7)
    x, images = _tensors([_obs(np.random.default_rng(3)) for _ in range(2)], FIELDS)
    calls = {"cameras": 0, "head": 0}
    actor.cameras.register_forward_hook(lambda *_: calls.__setitem__("cameras", calls["cameras"] + 1))
    actor.head.register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
    actor.sample(x, images=images)
    assert calls == {"cameras": 1, "head": 7}


def test_inputs_it_cannot_read_are_refused() -> None:
    actor = _actor()
    x, images = _tensors([_obs(np.random.default_rng(4))], FIELDS)
    with pytest.raises(ValueError, match=r"needs images \['wrist', 'front'\]"):
        actor.sample(x)
    with pytest.raises(ValueError, match="lacks"):
        actor.sample(x, images={"front": images["front"]})
    with pytest.raises(ValueError, match=r"obs \[B, 5\]"):
        actor.sample(x[:, :3], images=images)
    with pytest.raises(ValueError, match="reads no images"):  # the state-only head still says so
        FlowActor(5, 2, horizon=4, hidden=(8,)).sample(x, images=images)


def test_training_learns_a_chunk_that_only_the_camera_shows(one_thread: None) -> None:
    """The state is noise; which of two chunks is right is visible only in the frame's brightness.
    Flow matching must learn it through the conv stack (gradients reach the encoder)."""
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(6)
    actor = CNNFlowActor(2, 2, [("cam", (12, 12, 1))], horizon=3, hidden=(64, 64), steps=10, channels=(8,), latent=8)
    n = 64
    bright = torch.arange(n) % 2 == 0
    frames = torch.where(bright[:, None, None, None], 220, 30).to(torch.uint8).expand(n, 12, 12, 1).contiguous()
    up = torch.tensor([[0.6, -0.3]] * 3)
    target = torch.where(bright[:, None, None], up, -up)
    obs = torch.randn(n, 2)
    images = {"cam": frames}
    conv0 = actor.cameras.stacks[0].convs[0].weight.detach().clone()
    opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
    for _ in range(300):
        loss = actor.loss(obs, target, generator=g, images=images)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(conv0, actor.cameras.stacks[0].convs[0].weight)  # the encoder trained
    fresh = torch.randn(n, 2)  # unseen states: only the frame tells the chunks apart
    err = (actor.sample(fresh, deterministic=True, images=images) - target).abs().max().item()
    assert err < 0.2, err


def test_registry_builds_it_and_shapes_match() -> None:
    arch = _arch()
    actor = build_actor(arch)
    assert isinstance(actor, CNNFlowActor) and actor.arch() == arch
    shapes = actor_shapes(arch)
    assert shapes == {k: tuple(v.shape) for k, v in actor.state_dict().items()}
    assert param_count(shapes) == sum(p.numel() for p in actor.parameters())
    assert actor_images(arch) == VIEWS
    assert actor_images(_arch(kind="flow")) == []  # the state-only head reads no camera, whatever extra keys say
    with pytest.raises(ValueError, match="not a Gaussian actor"):
        build_gaussian(arch)


@pytest.mark.parametrize(("over", "match", "exc"), [
    ({"images": []}, "'images' must list 1..8 views", ValueError),
    ({"images": [["front", 4, 4, 3]]}, "sides must be in 8..1024", ValueError),
    ({"images": [["front", 16, 16, 3], ["front", 16, 16, 3]]}, "listed twice", ValueError),
    ({"images": [["front", 9, 9, 3]], "channels": [4, 4, 4, 4]}, "too small for 4 conv layers", ValueError),
    ({"channels": []}, "at least one conv layer", ValueError),
    ({"latent": 0}, "'latent' must be an int >= 1", ValueError),
    ({"horizon": 0}, "'horizon' must be an int >= 1", ValueError),
    ({"steps": 101}, "'steps' is 101, at most 100", ValueError),
    ({"hidden": []}, "hidden' of a cnn_flow policy must name at least one layer", ValueError),
    ({"obs_dim": -1}, "'obs_dim' must be an int >= 0", ValueError),
    ({"images": [["front", 1024, 1024, 4]] * 1, "channels": [1024] * 8}, "multiply-adds", ArchTooLarge),
    ({"version": 2}, "unsupported policy arch version 2 for kind 'cnn_flow'", ValueError),
])
def test_bad_arch_fields_are_named(over: dict, match: str, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=match):
        check_arch(_arch(**over))


def test_a_robot_without_the_camera_or_with_another_size_refuses_it() -> None:
    actor = _actor()
    cams = image_shapes(SPEC)
    with pytest.raises(WeightsError, match="reads camera 'wrist', which this robot does not have"):
        _load(actor, FIELDS, cameras={"front": cams["front"]})
    with pytest.raises(WeightsError, match="reads camera 'front' as 16x16x3, this robot's is 32x32x3"):
        _load(actor, FIELDS, cameras={**cams, "front": (32, 32, 3)})
