"""A late tick is counted in status and logged with why (how the robot was asking against the round
trips it measured), at most once every few seconds however many ticks are late."""

from __future__ import annotations

import logging
import time

import numpy as np

from edge_agent.chunk_source import ChunkSource
from shared.chunk_exec import ChunkExecutor

P = 0.02


def test_a_late_tick_logs_its_context_once_per_interval(caplog) -> None:
    sent: list[tuple[int, int]] = []
    src = ChunkSource(ChunkExecutor(2, horizon=4, overlap=1, blend_steps=0, timeout_s=5.0, period_s=P,
                                    max_inflight=2),
                      "cloud", ["x"], send=lambda rid, tick, obs, cams: sent.append((rid, tick)))
    obs = {"x": np.zeros(2, np.float32)}
    caplog.set_level(logging.WARNING, logger="fleetrl.chunks")
    t0 = time.monotonic()  # the clock answers are stamped with on arrival
    src.step(obs, 0, t0, None)  # the episode's first request; its tick is a start tick, not a late one
    rid, start = sent[0]
    src.chunk_arrived(rid, start, 1, np.full((4, 2), 0.5, np.float32))
    late = []
    for t in range(1, 12):  # the chunk covers ticks 0..3; the link then goes silent
        late.append(src.step(obs, t, t0 + t * P, None).late)
    assert late == [False] * 3 + [True] * 8
    assert src.counters["late_ticks"] == 8 and src.counters["start_ticks"] == 1
    lines = [r.getMessage() for r in caplog.records if "event=chunk_late" in r.getMessage()]
    assert len(lines) == 1, lines  # eight late ticks, one line
    line = lines[0]
    # Requests went out at ticks 2 and 4 (lead 2: a measured round trip under a tick, plus one); both are
    # out, the older 40 ms old.
    assert "action=hold tick=4 lead=2 window=2 in_flight=2 oldest_out_ms=40.0 " in line, line
    assert "rtt_max_ms=" in line and [t for _, t in sent] == [0, 2, 4], (line, sent)
