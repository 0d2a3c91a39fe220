"""Fixtures shared by the learner tests."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from cloud.learner.trainer import Trainer


@pytest.fixture
def trainers() -> Iterator[list[Trainer]]:
    """Trainers a test starts (append them): stopped and joined when it ends."""
    started: list[Trainer] = []
    yield started
    for t in started:
        t.stop()
        t.join(10)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny nets: intra-op threading only adds overhead (and fights other CPU users)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
