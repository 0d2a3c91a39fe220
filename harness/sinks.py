"""Where an in-process control loop's chunks go in tests: kept in order, with the thread that sent each."""

from __future__ import annotations

import threading

from edge_agent.recorder import PendingChunk
from shared.chunk import StepRecord


class ChunkSink:
    """A ``Recorder`` sink that keeps every chunk (callable from the control thread)."""

    def __init__(self) -> None:
        self.chunks: list[PendingChunk] = []
        self.threads: set[str] = set()  # names of the threads that handed chunks in
        self._lock = threading.Lock()

    def __call__(self, pc: PendingChunk) -> None:
        with self._lock:
            self.chunks.append(pc)
            self.threads.add(threading.current_thread().name)

    @property
    def steps(self) -> list[StepRecord]:
        return [s for c in self.chunks for s in c.steps]
