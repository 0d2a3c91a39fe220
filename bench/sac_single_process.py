"""Single-process SAC on FetchReachDense-v4: the speed/sample-efficiency baseline.

Runs env stepping and learning in one thread (one update per env step after a
random warm-up) and reports wall time to an 80 % training success rate, so the
distributed learner can be compared against the plain loop.

    python bench/sac_single_process.py [--time-limit 400] [--seed 0] [--gamma 0.98] ...
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cloud.learner.sac import SAC, SACConfig  # noqa: E402


def tune_malloc() -> None:
    """Keep freed tensor memory in the heap: avoids ~100 page faults per update (glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def flat_obs(o: dict, mode: str) -> np.ndarray:
    parts = [o["observation"], o["desired_goal"]]
    if mode == "obs_goal_delta":
        parts.append(o["desired_goal"] - o["achieved_goal"])
    return np.concatenate(parts).astype(np.float32)


def main() -> None:
    d = SACConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time-limit", type=float, default=400.0)
    p.add_argument("--target-success", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--obs-mode", choices=["obs_goal", "obs_goal_delta"], default="obs_goal")
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--tau", type=float, default=d.tau)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--init-alpha", type=float, default=d.init_alpha)
    p.add_argument("--target-entropy", type=float, default=d.target_entropy)
    p.add_argument("--hidden", type=str, default=",".join(map(str, d.hidden)))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-malloc-tune", action="store_true")
    args = p.parse_args()

    if not args.no_malloc_tune:
        tune_malloc()
    torch.set_num_threads(args.threads)
    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    env = gym.make("FetchReachDense-v4")
    o, _ = env.reset(seed=args.seed)
    obs = flat_obs(o, args.obs_mode)
    obs_dim, act_dim = obs.shape[0], env.action_space.shape[0]
    cfg = SACConfig(
        hidden=tuple(int(h) for h in args.hidden.split(",")),
        lr=args.lr,
        gamma=args.gamma,
        tau=args.tau,
        batch_size=args.batch_size,
        init_alpha=args.init_alpha,
        target_entropy=args.target_entropy,
    )
    print(f"config: {dataclasses.asdict(cfg)} obs_mode={args.obs_mode} seed={args.seed}", flush=True)
    sac = SAC(obs_dim, act_dim, cfg, seed=args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    cap = 1_000_000
    buf_obs = np.zeros((cap, obs_dim), np.float32)
    buf_next = np.zeros((cap, obs_dim), np.float32)
    buf_act = np.zeros((cap, act_dim), np.float32)
    buf_rew = np.zeros(cap, np.float32)
    buf_term = np.zeros(cap, np.float32)
    size = 0

    successes: collections.deque[float] = collections.deque(maxlen=20)
    t0 = time.perf_counter()
    last_print = t0
    last_updates, last_t = 0, t0
    steps = 0
    info_losses: dict[str, float] = {}
    while True:
        if steps < args.warmup:
            action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
        else:
            action = sac.actor.act(torch.from_numpy(obs)).numpy()
        o, reward, terminated, truncated, info = env.step(action)
        next_obs = flat_obs(o, args.obs_mode)
        i = size % cap
        buf_obs[i], buf_act[i], buf_rew[i], buf_next[i], buf_term[i] = obs, action, reward, next_obs, float(terminated)
        size += 1
        steps += 1
        obs = next_obs
        if terminated or truncated:
            successes.append(float(info["is_success"]))
            o, _ = env.reset()
            obs = flat_obs(o, args.obs_mode)

        if steps >= args.warmup:
            idx = rng.integers(0, min(size, cap), cfg.batch_size)
            batch = {
                "obs": torch.from_numpy(buf_obs[idx]),
                "action": torch.from_numpy(buf_act[idx]),
                "reward": torch.from_numpy(buf_rew[idx]),
                "next_obs": torch.from_numpy(buf_next[idx]),
                "terminated": torch.from_numpy(buf_term[idx]),
            }
            info_losses = sac.update(batch)

        now = time.perf_counter()
        rate = sum(successes) / len(successes) if successes else 0.0
        done = len(successes) == successes.maxlen and rate >= args.target_success
        if now - last_print >= 10.0 or done or now - t0 >= args.time_limit:
            ups = (sac.updates - last_updates) / (now - last_t)
            print(
                f"t={now - t0:6.1f}s steps={steps:6d} updates={sac.updates:6d} upd/s={ups:6.1f} "
                f"success@20={rate:.2f} alpha={info_losses.get('alpha', float('nan')):.4f} "
                f"q={info_losses.get('q_mean', float('nan')):.2f}",
                flush=True,
            )
            last_print, last_updates, last_t = now, sac.updates, now
        if done:
            print(f"REACHED success>={args.target_success} in {now - t0:.1f}s, {steps} env steps", flush=True)
            return
        if now - t0 >= args.time_limit:
            print(f"TIME LIMIT {args.time_limit:.0f}s reached without success>={args.target_success}", flush=True)
            return


if __name__ == "__main__":
    main()
