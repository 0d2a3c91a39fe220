"""Episode outcomes as the buffer indexes chunks: a return sums every chunk of its episode."""

from __future__ import annotations

import pyarrow as pa
import pytest

from cloud.buffer import outcomes
from cloud.buffer.outcomes import EpisodeOutcomes


def rows(*steps: tuple[str, float, bool, bool]) -> pa.Table:
    """(episode id, reward, episode ended, success) per row."""
    return pa.table({
        "episode_id": [s[0] for s in steps], "robot_id": ["r-" + s[0][0] for s in steps],
        "reward": pa.array([s[1] for s in steps], pa.float32()),
        "terminated": [s[2] for s in steps], "truncated": [False] * len(steps),
        "success": [s[3] for s in steps], "policy_version": [3] * len(steps),
    })


def test_a_return_spans_chunks_and_interleaved_robots() -> None:
    o = EpisodeOutcomes()
    assert o.success_rate() is None and o.mean_return() is None
    o.add(rows(("a1", 1.0, False, False), ("b1", -1.0, False, False)))
    o.add(rows(("a1", 0.5, True, True), ("b1", -2.0, False, False)))
    o.add(rows(("b1", -0.25, True, False), ("a2", 4.0, False, False)))
    assert [(e["robot_id"], e["return"], e["success"]) for e in o.episodes] == [("r-a", 1.5, True), ("r-b", -3.25, False)]
    assert o.total == 2 and o.success_rate() == 0.5 and o.mean_return() == pytest.approx(-0.875)
    assert o._open == {"a2": 4.0}  # still running


def test_partial_returns_of_vanished_episodes_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(outcomes, "MAX_OPEN", 3)
    o = EpisodeOutcomes()
    for i in range(5):
        o.add(rows((f"e{i}", 1.0, False, False)))
    assert list(o._open) == ["e2", "e3", "e4"]
    o.add(rows(("e4", 1.0, True, True)))
    assert o.episodes[-1]["return"] == 2.0
