"""Shared test fixtures."""

import socket

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


@pytest.fixture
def free_port() -> int:
    """A TCP port nobody listens on, for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def checkpoint_calls(monkeypatch) -> list:
    """The functions ``torch.utils.checkpoint.checkpoint`` is called with while the test runs (timm's
    checkpoint helpers call it), in order: equal outputs alone cannot show that checkpointing was on."""
    import torch.utils.checkpoint

    calls: list = []
    original = torch.utils.checkpoint.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(function)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    return calls
