"""What the benchmark scripts share: a deadline for one step, device sync, the environment record.

The scripts run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import timm
import torch

import lvit
from lvit.results import git_state

T = TypeVar("T")


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


def before_deadline(deadline: float, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` with whatever is left until ``deadline`` (``time.monotonic()``), or TimeoutError."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("skipped: --max-seconds spent")
    with time_limit(left):
        return work(*args)


def allow_tf32() -> None:
    """TF32 matmuls and convolutions for whatever runs in fp32 outside autocast, in every script alike."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: str, precision: str | None = None, **extra: Any) -> dict[str, Any]:
    """Device, library versions, code state, date and precision: the header of every JSON result.
    ``precision`` defaults to what the timing scripts run: bf16 autocast on CUDA, fp32 elsewhere."""
    cuda = device.startswith("cuda")
    sha, dirty = git_state()
    return dict(
        device=torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        torch=torch.__version__,
        timm=timm.__version__,
        **extra,
        lvit=lvit.__version__,
        git_sha=sha,
        dirty=dirty,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        precision=precision or ("bf16 autocast" if cuda else "fp32"),
        cpu_threads=torch.get_num_threads(),
    )


def write_json(path: str | None, benchmark: str, env: dict[str, Any], args: Any, started: float,
               **results: Any) -> None:
    """The script's JSON record at ``path`` (nothing when None): environment, settings, results, wall time.
    ``started`` is the script's ``time.monotonic()`` at start."""
    if path is None:
        return
    record = dict(benchmark=benchmark, **env, settings=vars(args), **results,
                  wall_seconds=round(time.monotonic() - started, 1))
    with open(path, "w") as handle:
        json.dump(record, handle, indent=1, default=str)
