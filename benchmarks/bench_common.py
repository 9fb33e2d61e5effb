"""What the benchmark scripts share: a deadline for one step, device sync, the environment record.

The scripts run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import signal
from collections.abc import Iterator
from typing import Any

import timm
import torch

import lvit


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds`` (a compile cannot be stopped otherwise),
    so one slow model or path cannot eat the whole budget."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"interrupted after {seconds:.0f} s (--max-seconds)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: str, **extra: Any) -> dict[str, Any]:
    """Device, library versions, date and precision: the header of every JSON result."""
    cuda = device.startswith("cuda")
    return dict(
        device=torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        torch=torch.__version__,
        timm=timm.__version__,
        **extra,
        lvit=lvit.__version__,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        precision="bf16 autocast" if cuda else "fp32",
        cpu_threads=torch.get_num_threads(),
    )
