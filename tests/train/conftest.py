"""Fixtures of the trainer tests (tests/train)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """Run torch on one thread: on the tiny models every op is microseconds of work, and intra-op thread
    hand-offs on a shared 2-core machine cost ~10x more than the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
