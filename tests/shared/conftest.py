"""Fixtures the policy tests share."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Small nets train several times faster on one thread than on a shared machine's few."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
