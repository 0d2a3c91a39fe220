"""Behavioural tests for the shared policy network and the SAC learning core."""

from __future__ import annotations

import copy

import pytest
import torch

from cloud.learner.sac import SAC, SACConfig
from shared.policy import ARCH_VERSION, Actor, build_actor

OBS_DIM, ACT_DIM = 6, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(n, OBS_DIM, generator=g),
        "action": torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, OBS_DIM, generator=g),
        "terminated": (torch.rand(n, generator=g) < 0.1).float(),
    }


def _small_sac(seed: int = 0, **kw) -> SAC:
    return SAC(OBS_DIM, ACT_DIM, SACConfig(hidden=(64, 64), batch_size=64, **kw), seed=seed)


# ---------------------------------------------------------------- policy


def test_actor_shapes_and_bounds() -> None:
    actor = Actor(OBS_DIM, ACT_DIM, hidden=(32, 32))
    obs = torch.randn(50, OBS_DIM) * 10  # large inputs push tanh to saturation
    mean, log_std = actor(obs)
    assert mean.shape == log_std.shape == (50, ACT_DIM)
    assert log_std.min() >= -20 and log_std.max() <= 2
    a, logp = actor.sample(obs)
    assert a.shape == (50, ACT_DIM) and logp.shape == (50,)
    assert torch.isfinite(logp).all()
    assert a.abs().max() <= 1.0
    for det in (True, False):
        act = actor.act(obs, deterministic=det)
        assert act.shape == (50, ACT_DIM) and act.abs().max() <= 1.0 and not act.requires_grad
    single = actor.act(torch.randn(OBS_DIM))
    assert single.shape == (ACT_DIM,)


def test_sample_log_prob_matches_change_of_variables() -> None:
    """The stable tanh correction must equal the textbook log(1 - tanh(u)^2) form."""
    torch.manual_seed(0)
    actor = Actor(OBS_DIM, ACT_DIM, hidden=(16,))
    obs = torch.randn(200, OBS_DIM)
    g = torch.Generator().manual_seed(3)
    a, logp = actor.sample(obs, generator=g)
    mean, log_std = actor(obs)
    u = torch.atanh(a.double().clamp(-1 + 1e-12, 1 - 1e-12))
    normal = torch.distributions.Normal(mean.double(), log_std.double().exp())
    ref = (normal.log_prob(u) - torch.log1p(-a.double().pow(2))).sum(-1)
    torch.testing.assert_close(logp.double(), ref, rtol=1e-3, atol=1e-3)


def test_arch_round_trip_gives_identical_actions() -> None:
    actor = Actor(OBS_DIM, ACT_DIM, hidden=(32, 16))
    arch = actor.arch()
    assert arch == {
        "kind": "mlp_gaussian",
        "version": ARCH_VERSION,
        "obs_dim": OBS_DIM,
        "act_dim": ACT_DIM,
        "hidden": [32, 16],
    }
    import json

    rebuilt = build_actor(json.loads(json.dumps(arch)))
    rebuilt.load_state_dict(actor.state_dict())
    obs = torch.randn(10, OBS_DIM)
    assert torch.equal(rebuilt.act(obs, deterministic=True), actor.act(obs, deterministic=True))


@pytest.mark.parametrize(
    "patch",
    [
        {"kind": "cnn"},
        {"version": ARCH_VERSION + 1},
        {"obs_dim": 0},
        {"act_dim": "4"},
        {"hidden": [64, -1]},
        {"hidden": 64},
    ],
)
def test_build_actor_rejects_bad_arch(patch: dict) -> None:
    arch = {**Actor(OBS_DIM, ACT_DIM).arch(), **patch}
    with pytest.raises(ValueError):
        build_actor(arch)


def test_build_actor_rejects_missing_fields_and_non_dict() -> None:
    arch = Actor(OBS_DIM, ACT_DIM).arch()
    del arch["obs_dim"]
    with pytest.raises(ValueError, match="obs_dim"):
        build_actor(arch)
    with pytest.raises(ValueError):
        build_actor(["mlp_gaussian"])  # type: ignore[arg-type]


# ---------------------------------------------------------------- SAC


def test_update_returns_finite_losses_and_changes_params() -> None:
    sac = _small_sac()
    before_actor = copy.deepcopy(sac.actor.state_dict())
    before_critic = copy.deepcopy(sac.critic.state_dict())
    before_target = copy.deepcopy(sac.critic_target.state_dict())
    out = sac.update(_batch())
    assert {"critic_loss", "actor_loss", "alpha_loss", "alpha"} <= out.keys()
    assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in out.values())
    assert sac.updates == 1
    for before, net in ((before_actor, sac.actor), (before_critic, sac.critic), (before_target, sac.critic_target)):
        after = net.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    assert out["alpha"] == pytest.approx(SACConfig().init_alpha)
    assert sac.alpha != out["alpha"]  # temperature was stepped too


def test_actor_state_is_detached_cpu_copy() -> None:
    sac = _small_sac()
    state = sac.actor_state()
    assert state.keys() == sac.actor.state_dict().keys()
    for k, v in state.items():
        assert v.device.type == "cpu" and not v.requires_grad
        assert v.data_ptr() != sac.actor.state_dict()[k].data_ptr()
    sac.update(_batch())
    assert any(not torch.equal(state[k], sac.actor.state_dict()[k]) for k in state)
    robot = build_actor(sac.actor.arch())
    robot.load_state_dict(sac.actor_state())


def test_same_seed_is_deterministic_and_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = _small_sac(seed=7), _small_sac(seed=7)
    assert torch.equal(torch.rand(1), expected)
    for i in range(3):
        assert a.update(_batch(seed=i)) == b.update(_batch(seed=i))
    assert not torch.equal(
        _small_sac(seed=8).actor.state_dict()["head.weight"], _small_sac(seed=7).actor.state_dict()["head.weight"]
    )


def test_checkpoint_round_trip_reproduces_next_updates() -> None:
    sac = _small_sac(seed=1)
    for i in range(5):
        sac.update(_batch(seed=i))
    ckpt = copy.deepcopy(sac.state_dict())
    expected = [sac.update(_batch(seed=10 + i)) for i in range(3)]
    expected_actor = sac.actor_state()

    restored = _small_sac(seed=99)  # different init and noise stream, all overwritten by load
    torch.manual_seed(0)  # global RNG state must not matter either
    restored.load_state_dict(ckpt)
    assert restored.updates == 5
    got = [restored.update(_batch(seed=10 + i)) for i in range(3)]
    assert got == expected
    for k, v in restored.actor_state().items():
        assert torch.equal(v, expected_actor[k])
    assert restored.updates == 8


def test_checkpoint_from_before_pixel_support_still_resumes_exactly() -> None:
    """Older checkpoints carry no actor_arch, generator_device or seed: they load as CPU MLP state."""
    sac = _small_sac(seed=2)
    sac.update(_batch(seed=0))
    old = copy.deepcopy(sac.state_dict())
    for key in ("actor_arch", "generator_device", "seed"):
        del old[key]
    expected = sac.update(_batch(seed=1))
    restored = _small_sac(seed=5)
    restored.load_state_dict(old)
    assert restored.update(_batch(seed=1)) == expected


def test_load_state_dict_rejects_mismatched_dims() -> None:
    ckpt = _small_sac().state_dict()
    other = SAC(OBS_DIM + 1, ACT_DIM, SACConfig(hidden=(64, 64)))
    with pytest.raises(ValueError):
        other.load_state_dict(ckpt)


def test_learns_one_step_bandit() -> None:
    """reward = -||a - target(obs)||^2, every step terminal: the mean action must find target."""
    torch.manual_seed(0)
    proj = torch.tensor([[0.6, -0.3, 0.0], [0.0, 0.5, -0.4], [-0.5, 0.0, 0.3]])

    def target(obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(obs[:, :3] @ proj) * 0.8

    sac = SAC(OBS_DIM, ACT_DIM, SACConfig(hidden=(64, 64), lr=1e-3, init_alpha=0.01), seed=0)
    test_obs = torch.randn(256, OBS_DIM)

    def err() -> float:
        return (sac.actor.act(test_obs, deterministic=True) - target(test_obs)).pow(2).sum(-1).mean().item()

    initial = err()
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        obs = torch.randn(128, OBS_DIM, generator=g)
        action = torch.rand(128, ACT_DIM, generator=g) * 2 - 1
        sac.update(
            {
                "obs": obs,
                "action": action,
                "reward": -(action - target(obs)).pow(2).sum(-1),
                "next_obs": torch.randn(128, OBS_DIM, generator=g),
                "terminated": torch.ones(128),
            }
        )
    final = err()
    assert initial > 0.3, initial  # random init is far off...
    assert final < 0.05, (initial, final)  # ...and learning gets close
