"""Steps into episode chunks: the control loop appends, full chunks go to a sink.

The recorder only collects numpy rows; encoding, compression and disk writes
happen in the sink, off the control thread.
"""

from __future__ import annotations

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


class Recorder:
    def __init__(self, chunk_steps: int, sink: Callable[[PendingChunk], object]):  # what the sink returns is ignored
        self.chunk_steps = chunk_steps
        self.sink = sink
        self.episode_id = ""
        self._steps: list[StepRecord] = []
        self.transitions = 0

    def start_episode(self) -> str:
        self.episode_id = uuid.uuid4().hex
        return self.episode_id

    def add(self, step: StepRecord) -> None:
        self._steps.append(step)
        self.transitions += 1
        done = step.terminated or step.truncated
        if done or len(self._steps) >= self.chunk_steps:
            self._emit(done, step.success)

    def cut(self) -> None:
        """End recording mid-episode (shutdown): what was recorded still goes out,
        its last step marked truncated so the episode has a clean end in the data."""
        if self._steps:
            self._steps[-1].truncated = True
            self._emit(False, False)  # not a finished episode: the ledger does not count it as one

    def _emit(self, done: bool, success: bool) -> None:
        steps, self._steps = self._steps, []
        self.sink(PendingChunk(self.episode_id, steps, done, success))
