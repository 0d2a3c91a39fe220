"""Steps into episode chunks: the control loop appends, full chunks go to a sink.

The recorder only collects numpy rows; encoding, compression and disk writes
happen in the sink, off the control thread.

A chunk is cut at an episode's end, or when it reaches ``chunk_steps`` steps,
``chunk_bytes`` bytes of raw step data, or ``chunk_seconds`` since its first
step, whichever comes first: small state steps can go in big chunks on a fast
link (every per-chunk cost is paid less often) while camera chunks stay bounded
in size and a slow robot's data still leaves within a bounded time.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

from shared.chunk import StepRecord


@dataclass(frozen=True)
class PendingChunk:
    episode_id: str
    steps: list[StepRecord]
    episode_done: bool
    success: bool


def step_bytes(step: StepRecord) -> int:
    """Raw bytes a step adds to a chunk: its observation and action (a next observation is mostly the
    following step's; compression is not counted, so the cut is predictable)."""
    return sum(v.nbytes for v in step.obs.values()) + step.action.nbytes


class Recorder:
    def __init__(self, chunk_steps: int, sink: Callable[[PendingChunk], object],  # what the sink returns is ignored
                 chunk_bytes: int = 0, chunk_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic):
        """``chunk_bytes`` / ``chunk_seconds``: 0 for no cut by size / by age."""
        if chunk_steps <= 0 or chunk_bytes < 0 or chunk_seconds < 0:
            raise ValueError(f"chunk limits must be positive: steps={chunk_steps} bytes={chunk_bytes} "
                             f"seconds={chunk_seconds}")
        self.chunk_steps = chunk_steps
        self.chunk_bytes = chunk_bytes
        self.chunk_seconds = chunk_seconds
        self.sink = sink
        self.clock = clock
        self.episode_id = ""
        self._steps: list[StepRecord] = []
        self._bytes = 0
        self._started = 0.0  # clock() at the chunk's first step
        self.transitions = 0

    def start_episode(self) -> str:
        self.episode_id = uuid.uuid4().hex
        return self.episode_id

    def add(self, step: StepRecord) -> None:
        if not self._steps:
            self._started = self.clock() if self.chunk_seconds else 0.0
        self._steps.append(step)
        self.transitions += 1
        if self.chunk_bytes:
            self._bytes += step_bytes(step)
        done = step.terminated or step.truncated
        if (done or len(self._steps) >= self.chunk_steps
                or (self.chunk_bytes and self._bytes >= self.chunk_bytes)
                or (self.chunk_seconds and self.clock() - self._started >= self.chunk_seconds)):
            self._emit(done, step.success)

    def cut(self) -> None:
        """End recording mid-episode (shutdown): what was recorded still goes out,
        its last step marked truncated so the episode has a clean end in the data."""
        if self._steps:
            self._steps[-1].truncated = True
            self._emit(False, False)  # not a finished episode: the ledger does not count it as one

    def _emit(self, done: bool, success: bool) -> None:
        steps, self._steps, self._bytes = self._steps, [], 0
        self.sink(PendingChunk(self.episode_id, steps, done, success))
