"""The ``flow`` policy kind: a flow-matching head emitting action chunks, on real torch modules,
through the registry, the weights format and a robot's verified load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.errors import WeightsError
from shared.observations import state_sizes
from shared.policy import Actor, ArchTooLarge, FlowActor, actor_shapes, build_actor, build_gaussian, check_arch
from shared.policy_runner import load_policy
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import decode_weights, encode_weights

SPEC = EpisodeSpec({"joints": FieldSpec((3,)), "goal": FieldSpec((2,))}, action_dim=2)
FIELDS = ["joints", "goal"]


def _arch(**over: object) -> dict:
    return {"kind": "flow", "version": 1, "obs_dim": 5, "act_dim": 2, "hidden": [16, 16], "horizon": 4,
            "steps": 5, **over}


def _obs(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    return [{"joints": rng.normal(size=3).astype(np.float32), "goal": rng.normal(size=2).astype(np.float32)}
            for _ in range(n)]


def _load(actor: torch.nn.Module, action_dim: int = 2, sizes: dict[str, int] | None = None):
    blob = encode_weights(actor.state_dict(), 3, {"actor": actor.arch(), "obs_fields": FIELDS})
    w = decode_weights(blob.data, blob.sha256, 1 << 26)
    return load_policy(w, sizes or state_sizes(SPEC), action_dim, max_params=1_000_000)


def test_shapes_and_range() -> None:
    torch.manual_seed(0)
    actor = FlowActor(5, 2, horizon=4, hidden=(16, 16), steps=3)
    obs = torch.randn(7, 5)
    assert (actor.obs_dim, actor.act_dim, actor.horizon, actor.steps) == (5, 2, 4, 3)
    chunk = actor.sample(obs)
    assert chunk.shape == (7, 4, 2) and chunk.abs().max() <= 1.0
    assert actor.act(obs).shape == (7, 2)
    loss = actor.loss(obs, torch.rand(7, 4, 2) * 2 - 1)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_bad_inputs_are_refused_with_the_expected_shape() -> None:
    actor = FlowActor(5, 2, horizon=4, hidden=(16,))
    with pytest.raises(ValueError, match=r"obs \[B, 5\]"):
        actor.sample(torch.zeros(3, 6))
    with pytest.raises(ValueError, match=r"chunk must be \[3, 4, 2\]"):
        actor.loss(torch.zeros(3, 5), torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="at least one integration step"):
        actor.sample(torch.zeros(3, 5), steps=0)
    with pytest.raises(ValueError, match="reads no images"):
        actor.act(torch.zeros(1, 5), images={"cam": torch.zeros(1, 8, 8, 3)})


def test_training_fits_a_fixed_obs_to_chunk_mapping(one_thread: None) -> None:
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(2)
    actor = FlowActor(3, 2, horizon=3, hidden=(64, 64), steps=10)
    proj = torch.randn(3, 6)
    obs = torch.randn(128, 3)
    target = torch.tanh(obs @ proj).view(-1, 3, 2) * 0.8
    opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
    with torch.no_grad():
        err_before = (actor.sample(obs, deterministic=True) - target).pow(2).mean().item()
    losses = []
    for _ in range(300):
        loss = actor.loss(obs, target, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:30])
    err_after = (actor.sample(obs, deterministic=True) - target).pow(2).mean().item()
    assert err_after < 0.2 * err_before and err_after < 0.02


def test_mask_leaves_padded_steps_out() -> None:
    torch.manual_seed(3)
    actor = FlowActor(5, 2, horizon=4, hidden=(16,))
    obs, chunk = torch.randn(6, 5), torch.rand(6, 4, 2)

    def loss(c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return actor.loss(obs, c, torch.Generator().manual_seed(0), mask=mask)

    assert torch.allclose(loss(chunk, torch.ones(6, 4)), loss(chunk, None))
    mask = torch.ones(6, 4)
    mask[0] = 0  # a row with nothing counted: whatever it holds must not move the loss
    wild = chunk.clone()
    wild[0] = 1e3
    assert torch.allclose(loss(chunk, mask), loss(wild, mask))
    assert not torch.allclose(loss(chunk, None), loss(wild, None))


def test_sampling_steps_and_determinism() -> None:
    torch.manual_seed(4)
    actor = FlowActor(5, 2, horizon=4, hidden=(16,), steps=7)
    obs = torch.randn(3, 5)
    assert torch.equal(actor.sample(obs, deterministic=True), actor.sample(obs, deterministic=True))
    one = actor.sample(obs, steps=1, deterministic=True)
    assert not torch.allclose(one, actor.sample(obs, steps=20, deterministic=True))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(actor.sample(obs, generator=g1), actor.sample(obs, generator=g2))
    assert not torch.equal(actor.sample(obs), actor.sample(obs))  # noise differs between calls
    calls = []
    handle = actor.head.register_forward_hook(lambda *_: calls.append(1))
    actor.sample(obs)
    assert len(calls) == 7  # the arch's steps by default
    calls.clear()
    actor.sample(obs, steps=3)
    handle.remove()
    assert len(calls) == 3


def test_registry_builds_flow_and_shapes_match() -> None:
    arch = _arch()
    actor = build_actor(arch)
    assert isinstance(actor, FlowActor) and actor.arch() == arch
    assert actor_shapes(arch) == {k: tuple(v.shape) for k, v in actor.state_dict().items()}
    with pytest.raises(ValueError, match="not a Gaussian actor"):
        build_gaussian(arch)


@pytest.mark.parametrize(("over", "match", "exc"), [
    ({"horizon": 0}, "'horizon' must be an int >= 1", ValueError),
    ({"horizon": 257}, "'horizon' is 257, at most 256", ValueError),
    ({"horizon": 2.5}, "'horizon' must be an int", ValueError),
    ({"horizon": True}, "'horizon' must be an int", ValueError),
    ({"steps": 0}, "'steps' must be an int >= 1", ValueError),
    ({"steps": 101}, "'steps' is 101, at most 100", ValueError),
    ({"hidden": []}, "at least one layer", ValueError),
    ({"hidden": [0]}, "'hidden' must be a list of ints >= 1", ValueError),
    ({"obs_dim": 0}, "'obs_dim' must be an int >= 1", ValueError),
    ({"act_dim": "2"}, "'act_dim' must be an int", ValueError),
    ({"act_dim": 1 << 19, "horizon": 4}, "chunk of 4 x 524288 actions", ArchTooLarge),
    ({"version": 2}, "unsupported policy arch version 2 for kind 'flow'", ValueError),
])
def test_registry_refuses_bad_flow_fields(over: dict, match: str, exc: type) -> None:
    arch = _arch(**over)
    with pytest.raises(exc, match=match):
        check_arch(arch)


def test_missing_horizon_is_named() -> None:
    arch = _arch()
    del arch["horizon"]
    with pytest.raises(ValueError, match="'horizon'"):
        check_arch(arch)


def test_flow_blob_round_trips_to_a_robot_and_acts_in_chunks() -> None:
    torch.manual_seed(5)
    actor = FlowActor(5, 2, horizon=4, hidden=(16, 16), steps=5)
    policy = _load(actor)
    assert isinstance(policy.actor, FlowActor) and policy.horizon == 4
    obs = _obs(np.random.default_rng(0), 3)
    chunks = policy.act_chunk_batch(obs, deterministic=True)
    assert chunks.shape == (3, 4, 2) and chunks.dtype == np.float32 and np.abs(chunks).max() <= 1.0
    x = torch.from_numpy(np.stack([np.concatenate([o["joints"], o["goal"]]) for o in obs]))
    np.testing.assert_allclose(chunks, actor.sample(x, deterministic=True).numpy(), atol=1e-6)
    first = policy.act_batch(obs, deterministic=True)
    np.testing.assert_allclose(first, chunks[:, 0], atol=1e-6)
    np.testing.assert_allclose(policy.act(obs[0], deterministic=True), chunks[0, 0], atol=1e-6)
    assert policy.act_chunk_batch(obs).shape == (3, 4, 2)  # stochastic too


def test_gaussian_policy_acts_as_a_chunk_of_one() -> None:
    torch.manual_seed(6)
    policy = _load(Actor(5, 2, hidden=(8,)))
    obs = _obs(np.random.default_rng(1), 4)
    chunks = policy.act_chunk_batch(obs, deterministic=True)
    assert policy.horizon == 1 and chunks.shape == (4, 1, 2)
    np.testing.assert_allclose(chunks[:, 0], policy.act_batch(obs, deterministic=True), atol=1e-6)


def test_a_robot_of_other_dims_refuses_a_flow_policy() -> None:
    actor = FlowActor(5, 2, horizon=4, hidden=(16,))
    with pytest.raises(WeightsError, match=r"policy shape 5->2 does not fit this robot \(5->3\)"):
        _load(actor, action_dim=3)
    with pytest.raises(WeightsError, match=r"policy shape 5->2 does not fit this robot \(6->2\)"):
        _load(actor, sizes={"joints": 4, "goal": 2})


def test_a_blob_whose_tensors_disagree_with_its_horizon_is_refused() -> None:
    actor = FlowActor(5, 2, horizon=4, hidden=(16,))
    arch = {**actor.arch(), "horizon": 5}
    blob = encode_weights(actor.state_dict(), 3, {"actor": arch, "obs_fields": FIELDS})
    w = decode_weights(blob.data, blob.sha256, 1 << 26)
    with pytest.raises(WeightsError, match="do not match the architecture"):
        load_policy(w, state_sizes(SPEC), 2, max_params=1_000_000)
