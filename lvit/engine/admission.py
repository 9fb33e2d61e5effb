"""Start a GPU training only when its GPU has room for it.

``lvit reproduce`` runs many notebooks and training workers on one GPU, each its own process with its own
CUDA context, cached dataset and CUDA-graph memory pools. Nothing stopped them from starting more trainings
than the card holds: on an 80 GB H100 the proxy suite's dense pass (12 notebooks, 8 workers, 5-12 GiB a
process) ran out of memory in four notebooks and a worker. Here a training waits until the GPU reports
enough free memory, and starts are taken one at a time (a lock file per GPU, shared by every lvit process on
the machine) and held until the admitted training has run its first step: by then it has allocated most of
what it will hold, so the next one sees the memory as taken.

A training that waits longer than ``patience_s`` starts anyway, with a warning: the memory may be held by a
process that is not training (an idle notebook kernel's cache), and waiting forever would hang the suite.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

__all__ = ["admitted", "free_gib", "release_cached_memory"]

GIB = 2**30


def free_gib(device: torch.device) -> float:
    """Free memory on ``device`` as the driver reports it (every process's allocations counted), in GiB."""
    free, _total = torch.cuda.mem_get_info(device)
    return free / GIB


def release_cached_memory(device: torch.device) -> None:
    """Hand this process's cached, unused GPU blocks back to the driver, so other processes can have them
    (PyTorch's caching allocator keeps them otherwise: an idle worker would hold a finished training's)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _lock_path(device: torch.device) -> Path:
    """One lock per physical GPU: its UUID names it, whatever CUDA_VISIBLE_DEVICES calls it in a process."""
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return Path(tempfile.gettempdir()) / f"lvit-gpu-admission-{uuid}.lock"


@contextlib.contextmanager
def admitted(
    device: torch.device,
    need_gib: float,
    *,
    poll_s: float = 1.0,
    patience_s: float = 900.0,
    free_memory: Callable[[torch.device], float] = free_gib,
    lock_path: Path | None = None,
) -> Iterator[Callable[[], None]]:
    """Wait until ``device`` has ``need_gib`` free, then run the body; yields ``settled``, which the body
    calls once its training has allocated its memory (after the first step) to let the next training in.

    A no-op off CUDA or with ``need_gib <= 0``. ``free_memory`` and ``lock_path`` are for tests.
    """
    if device.type != "cuda" or need_gib <= 0:
        yield lambda: None
        return
    path = lock_path or _lock_path(device)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held = True

        def settled() -> None:
            nonlocal held
            if held:
                fcntl.flock(lock, fcntl.LOCK_UN)
                held = False

        try:
            _wait_for_memory(device, need_gib, poll_s, patience_s, free_memory)
            yield settled
        finally:
            settled()


def _wait_for_memory(device: torch.device, need_gib: float, poll_s: float, patience_s: float,
                     free_memory: Callable[[torch.device], float]) -> None:
    release_cached_memory(device)  # this process's own cache counts as taken otherwise
    started = time.monotonic()
    while (free := free_memory(device)) < need_gib:
        if time.monotonic() - started >= patience_s:
            warnings.warn(f"starting a training on {device} with {free:.1f} GiB free after waiting "
                          f"{patience_s:.0f} s for {need_gib:.1f} GiB; it may run out of memory",
                          stacklevel=3)
            return
        time.sleep(poll_s)
