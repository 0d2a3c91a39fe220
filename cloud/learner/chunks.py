"""Stored steps -> (observation, chunk of the next ``horizon`` actions) pairs for chunked policies.

A chunked policy (``flow``) learns, for the observation at step t, the actions
taken at steps t .. t+H-1 of the same episode. Rows come as the learner stores
them: each with its episode's identity (``robot_id``, ``episode_id``) and its
``step``. A *run* is a stretch of rows of one episode with consecutive steps;
a new run starts wherever the episode changes or a step does not follow on (a
lost range, a cut between stored segments). No chunk crosses a run's end.

Padding, as ACT and LeRobot do it: the steps of a chunk past its run's end
repeat the run's last action (the arm holds what it last did) and are marked
``valid = False``. :class:`~cloud.learner.flow_sft.FlowSFT` leaves padded steps
out of the loss by default (ACT's ``action_is_pad``), so a run cut short by a
lost range or a segment boundary never teaches a made-up continuation; the
padded values still fill the chunk the network reads, which is why they are
the last action rather than zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from shared.schema import OBS_PREFIX

EPISODE_KEYS = ("robot_id", "episode_id")
CHUNK = "action_chunk"  # batch (and demo ring) key: [B, horizon, act_dim] actions
CHUNK_VALID = "chunk_valid"  # batch key: [B, horizon], 1 where the step was taken, 0 where it is padding


@dataclass(frozen=True)
class Chunks:
    """Training pairs: ``obs`` [N, obs_dim], ``actions`` [N, H, act_dim], ``valid`` [N, H] (False: padding)."""

    obs: np.ndarray
    actions: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return int(self.obs.shape[0])


def run_ends(episode: np.ndarray, step: np.ndarray) -> np.ndarray:
    """For each row, the index one past the last row of its run (rows ordered by episode, then step)."""
    n = len(episode)
    if len(step) != n:
        raise ValueError(f"episode ids ({n}) and steps ({len(step)}) must have one entry per row")
    if n == 0:
        return np.zeros(0, np.int64)
    step = np.asarray(step, np.int64)
    same = np.asarray(episode[1:] == episode[:-1], bool)
    if np.any(same & (step[1:] <= step[:-1])):
        i = int(np.flatnonzero(same & (step[1:] <= step[:-1]))[0])
        raise ValueError(f"rows must be ordered by episode and step: row {i + 1} (step {step[i + 1]}) follows "
                         f"step {step[i]} of the same episode")
    breaks = np.flatnonzero(~same | (step[1:] != step[:-1] + 1)) + 1  # first row of each later run
    ends = np.append(breaks, n)  # one past the end of each run
    return np.repeat(ends, np.diff(np.concatenate([[0], ends])))


def chunk_indices(episode: np.ndarray, step: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``[N, H]`` of each row's chunk (padding repeats the run's last row) and ``valid`` ``[N, H]``."""
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"chunk horizon must be an int >= 1, got {horizon!r}")
    end = run_ends(episode, step)
    want = np.arange(len(end))[:, None] + np.arange(int(horizon))[None, :]
    valid = want < end[:, None]
    return np.minimum(want, end[:, None] - 1), valid


def build_chunks(obs: np.ndarray, actions: np.ndarray, episode: np.ndarray, step: np.ndarray,
                 horizon: int) -> Chunks:
    """One training pair per row: its observation and the chunk of actions from it on (see the module doc)."""
    obs, actions = np.asarray(obs, np.float32), np.asarray(actions, np.float32)
    if obs.ndim != 2 or actions.ndim != 2 or len(obs) != len(actions):
        raise ValueError(f"obs [N, obs_dim] and actions [N, act_dim] must have the same N, got "
                         f"{list(obs.shape)} and {list(actions.shape)}")
    idx, valid = chunk_indices(np.asarray(episode), np.asarray(step), horizon)
    return Chunks(obs, actions[idx], valid)


def order_rows(table: pa.Table) -> pa.Table:
    """The table's rows ordered by episode (robot, episode id) and step, as :func:`build_chunks` needs them."""
    missing = [c for c in (*EPISODE_KEYS, "step", "action") if c not in table.schema.names]
    if missing:
        raise ValueError(f"stored steps need columns {missing} to build action chunks")
    return table.sort_by([(k, "ascending") for k in (*EPISODE_KEYS, "step")])


def table_chunks(table: pa.Table, obs_fields: list[str], horizon: int) -> Chunks:
    """Training pairs from stored steps (a learner's Parquet rows, any order): state fields ``obs_fields``
    flattened in that order, the recorded ``action``."""
    table = order_rows(table)
    n = table.num_rows
    missing = [f for f in obs_fields if OBS_PREFIX + f not in table.schema.names]
    if missing or not obs_fields:
        raise ValueError(f"stored steps lack observation fields {missing or obs_fields}")
    parts = [_flat(table.column(OBS_PREFIX + f), n) for f in obs_fields]
    obs = np.concatenate(parts, axis=1) if n else np.zeros((0, 0), np.float32)
    actions = _flat(table.column("action"), n)
    step = table.column("step").to_numpy(zero_copy_only=False)
    return build_chunks(obs.reshape(n, -1), actions.reshape(n, -1), episode_keys(table), step, horizon)


def episode_keys(table: pa.Table) -> np.ndarray:
    """One key per row naming its episode: episode ids are a robot's own, so the robot is part of it."""
    robots, episodes = table.column("robot_id").to_pylist(), table.column("episode_id").to_pylist()
    return np.asarray([f"{r}\x00{e}" for r, e in zip(robots, episodes)], dtype=object)


def _flat(column: pa.ChunkedArray, n: int) -> np.ndarray:
    arr = column.combine_chunks()
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    return np.asarray(arr.to_numpy(zero_copy_only=False), np.float32).reshape(n, -1)
