"""Generalised advantage estimation (Schulman et al. 2016), with terminations and truncations apart.

A terminated step ends the return: nothing is bootstrapped past it. A truncated step (a time
limit) ends the episode but not the task: its target bootstraps with the value of the state the
episode was cut at (``next_values`` holds it), and only the advantage recursion stops there,
because the next row belongs to a new episode. Treating truncation as termination would teach
the critic that every state 50 steps in is worthless.
"""

from __future__ import annotations

import numpy as np


def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
        truncated: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, returns) for rollouts of shape (T, N) (or (T,)).

    ``values[t]`` = V(s_t); ``next_values[t]`` = V(s_{t+1}) of the same episode: the state the
    step led to, also when the episode ended there (the env's final observation, before reset).
    delta_t = r_t + gamma * (1 - terminated_t) * next_values[t] - values[t]
    A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}, done = terminated or truncated.
    """
    shape = np.shape(rewards)
    for name, a in (("values", values), ("next_values", next_values), ("terminated", terminated),
                    ("truncated", truncated)):
        if np.shape(a) != shape:
            raise ValueError(f"gae: {name} has shape {np.shape(a)}, rewards {shape}")
    r = np.asarray(rewards, np.float64)
    not_term = 1.0 - np.asarray(terminated, np.float64)
    not_done = not_term * (1.0 - np.asarray(truncated, np.float64))
    delta = r + gamma * not_term * np.asarray(next_values, np.float64) - np.asarray(values, np.float64)
    adv = np.zeros_like(delta)
    last = np.zeros(shape[1:])
    for t in range(shape[0] - 1, -1, -1):
        last = delta[t] + gamma * lam * not_done[t] * last
        adv[t] = last
    returns = adv + np.asarray(values, np.float64)
    return adv.astype(np.float32), returns.astype(np.float32)
