"""A background thread that samples batches ahead of the trainer (TorchRL's prefetch).

Sampling images (memory gathers, Parquet row groups from disk) costs as much
as an update; a thread fills a bounded queue with batches already turned into
torch tensors (pinned, where a GPU will take them) so the trainer's step only
copies to the device. The prefetcher owns the generator it is given: batches
are drawn in order from it, and ``rng_state`` is the state right after the
batch ``get`` last handed out, so a checkpoint resumes the draws exactly
(batches sampled ahead and never handed out are simply drawn again).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .source import Batch, SampleSource

if TYPE_CHECKING:  # torch on first use: the buffer package is imported by CLI commands that never sample
    import torch


@dataclass
class _Item:
    batch: dict[str, torch.Tensor] | None
    state: Mapping[str, Any] | None  # the generator's state right after drawing this batch
    error: BaseException | None = None


def to_tensors(batch: Batch, pin: bool) -> dict[str, torch.Tensor]:
    """numpy batch -> CPU tensors (no copy where the arrays allow), pinned when asked."""
    import torch

    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    return {k: t.pin_memory() for k, t in out.items()} if pin else out


class Prefetcher:
    """``get()`` returns the next batch of ``batch_size`` rows from ``source``, drawn with ``rng``.

    ``depth`` batches are prepared ahead on a thread (0: sampled inline on ``get``).
    An error while sampling is raised by ``get``. Create it once ``source.size > 0``.
    """

    def __init__(self, source: SampleSource, batch_size: int, rng: np.random.Generator, depth: int = 2,
                 pin_memory: bool = False):
        if batch_size < 1:
            raise ValueError(f"prefetch batch_size must be at least 1, got {batch_size}")
        if depth < 0:
            raise ValueError(f"prefetch depth must be 0 or more, got {depth}")
        if source.size <= 0:
            raise ValueError("prefetcher created before the source has rows to sample")
        self.source, self.batch_size, self.rng, self.depth = source, batch_size, rng, depth
        import torch

        self.pin = bool(pin_memory and torch.cuda.is_available())
        self._state: Mapping[str, Any] = rng.bit_generator.state
        self._error: BaseException | None = None
        self._closed = False
        self._stop = threading.Event()
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name="fleetrl-prefetch", daemon=True)
            self._thread.start()

    def _draw(self) -> _Item:
        batch = self.source.sample(self.batch_size, self.rng)
        state = self.rng.bit_generator.state
        return _Item(to_tensors(batch, self.pin), state)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._draw()
            except BaseException as e:  # handed to get(), which raises it on the trainer's thread
                self._queue.put(_Item(None, None, e))
                return
            self._queue.put(item)  # blocks while ``depth`` batches wait; close() frees a slot

    def get(self) -> dict[str, torch.Tensor]:
        """The next batch (blocks until the thread has one)."""
        if self._closed:
            raise RuntimeError("prefetcher is closed")
        if self._error is not None:
            raise self._error
        item = self._draw() if self._thread is None else self._queue.get()
        if item.error is not None:
            self._error = item.error
            raise item.error
        assert item.batch is not None and item.state is not None
        self._state = item.state
        return item.batch

    def rng_state(self) -> dict[str, Any]:
        """The generator's state right after the batch ``get`` last returned (before any: as given)."""
        return dict(self._state)

    def close(self) -> None:
        """Stop the thread; batches drawn ahead are dropped (``rng_state`` does not count them)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            # After the stop the thread puts at most one more item: empty the queue so that put cannot block.
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
