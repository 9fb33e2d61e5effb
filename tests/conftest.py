"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: small CPU forwards run fastest that way, and on a shared 2-core machine two
    threads spin against each other (5-15x the CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
