"""Shared test fixtures."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


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


def _as_rank(rank: int, port: int, body, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    body(rank, *args)
    from lvit.engine import loop

    loop.cleanup_distributed()


@pytest.fixture
def on_two_ranks(free_port):
    """``run(body, *args)`` calls ``body(rank, *args)`` in two processes set up as torchrun's ranks 0 and 1
    on this machine (one intra-op thread each), then ends each one's process group. The processes are
    forked: they inherit the imported modules (instead of re-importing torch and timm, seconds each) and
    the test's monkeypatches, and ``body`` need not be picklable."""

    def run(body, *args) -> None:
        mp.start_processes(_as_rank, args=(free_port, body, args), nprocs=2, join=True, start_method="fork")

    return run


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
