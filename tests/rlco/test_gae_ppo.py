"""GAE against a hand-computed example; PPO improves on a trivially learnable task in seconds."""

import numpy as np
import pytest
import torch

from cloud.rlco.gae import gae
from cloud.rlco.ppo import PPO
from cloud.rlco.vecenv import VecEnv
from hal_drivers.point_mass.config import PointMassConfig
from hal_drivers.point_mass.driver import PointMassRobot
from cloud.rlco.config import RLConfig
from shared.policy.mlp import Actor


def test_gae_hand_computed_with_a_truncation_and_a_termination():
    # gamma 0.9, lambda 0.5. Step 1 is truncated (bootstrapped with V = 4 of the state it was cut at),
    # step 2 terminated (its next value 9 must be ignored), step 3 is mid-episode at the rollout's end.
    r = np.array([1.0, 2.0, 3.0, 1.0])
    v = np.array([0.5, 1.0, 1.5, 0.2])
    nv = np.array([1.0, 4.0, 9.0, 0.3])
    term = np.array([0, 0, 1, 0], bool)
    trunc = np.array([0, 1, 0, 0], bool)
    adv, ret = gae(r, v, nv, term, trunc, gamma=0.9, lam=0.5)
    # deltas: 1 + .9*1 - .5 = 1.4; 2 + .9*4 - 1 = 4.6; 3 - 1.5 = 1.5; 1 + .9*.3 - .2 = 1.07
    # A3 = 1.07; A2 = 1.5 (terminated: no recursion); A1 = 4.6 (truncated: no recursion); A0 = 1.4 + .45*4.6
    want = np.array([1.4 + 0.45 * 4.6, 4.6, 1.5, 1.07])
    assert adv == pytest.approx(want, rel=1e-6)
    assert ret == pytest.approx(want + v, rel=1e-6)


def test_gae_shapes_over_envs_and_checks():
    T, N = 5, 3
    z = np.zeros((T, N))
    adv, ret = gae(np.ones((T, N)), z, z, z.astype(bool), z.astype(bool), 1.0, 1.0)
    assert adv[:, 0] == pytest.approx([5, 4, 3, 2, 1])  # undiscounted reward-to-go with V = 0
    with pytest.raises(ValueError, match="next_values"):
        gae(np.ones((T, N)), z, np.zeros((T, 2)), z, z, 0.9, 0.9)


def test_ppo_improves_on_a_point_mass_in_seconds():
    torch.manual_seed(0)
    fields = ("position", "velocity", "goal")
    envs = VecEnv(lambda s: PointMassRobot(PointMassConfig(dims=1, seed=s, arena=1.0, tolerance=0.1,
                                                           terminate_on_success=False)),
                  range(8), fields)
    cfg = RLConfig(envs=8, steps=50, epochs=4, minibatch=100, lr=3e-3, gamma=0.95, beta=0.0, entropy_coef=0.0,
                   critic_warmup=0)
    actor = Actor(3, 1, [32, 32])
    ppo = PPO(actor, torch.zeros(3), torch.ones(3), cfg, [32, 32], seed=0)
    rewards = []
    for _ in range(25):
        ro = ppo.collect(envs, cfg.steps)
        ppo.update(ro)
        rewards.append(float(ro.reward.mean()))
    envs.close()
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.1, rewards
