"""The recorder cuts chunks by steps, raw bytes, age and episode end; every step lands in one chunk, in order."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.recorder import PendingChunk, Recorder, step_bytes
from shared.chunk import StepRecord, decode_chunk, make_chunk
from shared.config_agent import ControlConfig
from shared.errors import ConfigError
from shared.schema import EpisodeSpec, FieldSpec

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "cam": FieldSpec((8, 8, 3), "uint8")}, action_dim=2,
                   action_low=(-1.0, -1.0), action_high=(1.0, 1.0))


def _step(i: int, end: bool = False) -> StepRecord:
    obs: dict[str, np.ndarray] = {"pos": np.full(3, i, np.float32), "cam": np.full((8, 8, 3), i % 255, np.uint8)}
    nxt: dict[str, np.ndarray] = {"pos": np.full(3, i + 1, np.float32),
                                  "cam": np.full((8, 8, 3), (i + 1) % 255, np.uint8)}
    return StepRecord(obs=obs, action=np.zeros(2, np.float32), reward=0.0, next_obs=nxt, terminated=end,
                      truncated=False, step=i)


def _record(rec: Recorder, n: int, end_at: int | None = None) -> None:
    rec.start_episode()
    for i in range(n):
        rec.add(_step(i, end=i == end_at))


def test_cut_by_bytes_before_steps() -> None:
    out: list[PendingChunk] = []
    per = step_bytes(_step(0))
    assert per == 3 * 4 + 8 * 8 * 3 + 2 * 4
    rec = Recorder(1000, out.append, chunk_bytes=per * 7)
    _record(rec, 30, end_at=29)
    assert [len(c.steps) for c in out] == [7, 7, 7, 7, 2]
    assert [c.episode_done for c in out] == [False] * 4 + [True]
    assert [s.step for c in out for s in c.steps] == list(range(30))  # nothing lost, nothing twice
    for c in out:  # each chunk is one the learner takes (frames stored once need consecutive steps)
        body = make_chunk(SPEC, "r", c.episode_id, c.steps).body
        assert decode_chunk(body, SPEC, max_decompressed=1 << 20, max_rows=1000).num_rows == len(c.steps)


def test_cut_by_age_on_the_next_step() -> None:
    now = [0.0]
    out: list[PendingChunk] = []
    rec = Recorder(1000, out.append, chunk_seconds=1.0, clock=lambda: now[0])
    rec.start_episode()
    for i in range(12):
        rec.add(_step(i))
        now[0] += 0.25  # a slow robot: a step every 0.25 s
    assert [len(c.steps) for c in out] == [5, 5]  # the step 1 s after a chunk's first closes it
    rec.cut()
    assert [len(c.steps) for c in out] == [5, 5, 2] and out[-1].steps[-1].truncated


def test_steps_and_episode_end_still_cut_with_the_new_limits_unset() -> None:
    out: list[PendingChunk] = []
    rec = Recorder(5, out.append)
    _record(rec, 12, end_at=11)
    assert [len(c.steps) for c in out] == [5, 5, 2]


def test_config_keys_and_their_bounds() -> None:
    cfg = ControlConfig()
    assert cfg.chunk_bytes == 32 << 20 and cfg.chunk_seconds == 0.0 and cfg.chunk_steps == 50
    assert ControlConfig(chunk_steps=2000, chunk_bytes=1 << 20, chunk_seconds=2.5).chunk_seconds == 2.5
    for bad in ({"chunk_bytes": -1}, {"chunk_seconds": -0.5}):
        with pytest.raises((ConfigError, ValueError), match=next(iter(bad))):
            ControlConfig(**bad)
    with pytest.raises(ValueError, match="chunk limits"):
        Recorder(10, print, chunk_bytes=-1)
