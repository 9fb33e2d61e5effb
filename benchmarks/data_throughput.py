"""Samples/s of the procedural generators: batched ``generate`` vs ``__getitem__`` through a DataLoader.

    .venv/bin/python benchmarks/data_throughput.py --threads 2
    .venv/bin/python benchmarks/data_throughput.py --shapes-size 64 --scenes-size 128 --samples 1024 256

Prints one markdown table row per (dataset, path, device); CUDA rows appear when a GPU is present.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import timm
import torch
from torch.utils.data import DataLoader, Dataset

from lvit.data import LocalShapes, Scenes


def _rate(fn: Callable[[int], int], samples: int, warmup: int, sync: bool) -> float:
    """Samples/s of ``fn(samples)`` after ``fn(warmup)`` (allocator, CUDA context, imports excluded)."""
    fn(warmup)
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    count = fn(samples)
    if sync:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def elementwise_mops() -> float:
    """Million float32 elementwise ops/s of this process: the machine's speed (and load) when measured."""
    x = torch.rand(1 << 18)
    start = time.perf_counter()
    for _ in range(20):
        torch.sin(x) * x + x
    return 20 * 3 * x.numel() / (time.perf_counter() - start) / 1e6


def batched(ds: Dataset, batch: int, device: str) -> Callable[[int], int]:
    def run(samples: int) -> int:
        for start in range(0, samples, batch):
            ds.generate(torch.arange(start, min(start + batch, samples)), device)
        return samples

    return run


def loader(ds: Dataset, batch: int, workers: int) -> Callable[[int], int]:
    def run(samples: int) -> int:
        subset = torch.utils.data.Subset(ds, range(samples))
        for _ in DataLoader(subset, batch_size=batch, num_workers=workers):
            pass
        return samples

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes-size", type=int, default=64)
    parser.add_argument("--scenes-size", type=int, default=128)
    parser.add_argument("--samples", type=int, nargs=2, default=(512, 64), help="LocalShapes, Scenes")
    parser.add_argument("--batch-size", type=int, nargs=2, default=(256, 32), help="LocalShapes, Scenes")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, CPU {cpu}, {args.threads} torch threads, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}, "
        f"elementwise calibration {elementwise_mops():.0f} M ops/s"
    )
    sets = [
        ("LocalShapes", LocalShapes("train", 1 << 20, args.shapes_size), args.shapes_size, 0),
        ("Scenes", Scenes("train", 1 << 20, args.scenes_size), args.scenes_size, 1),
    ]
    print("| dataset | size | path | device | samples/s |\n|---|---|---|---|---|", flush=True)
    for name, ds, size, k in sets:
        samples, batch = args.samples[k], args.batch_size[k]
        paths = [(f"generate(batch={batch})", "cpu", batched(ds, batch, "cpu"), samples)]
        if torch.cuda.is_available():
            paths.append((f"generate(batch={batch})", "cuda", batched(ds, batch, "cuda"), samples * 8))
        paths += [
            (f"DataLoader __getitem__, {w} workers", "cpu", loader(ds, batch, w), samples)
            for w in args.workers
        ]
        for path, device, fn, count in paths:
            rate = _rate(fn, count, batch, sync=device == "cuda")
            label = torch.cuda.get_device_name() if device == "cuda" else "cpu"
            print(f"| {name} | {size} | {path} | {label} | {rate:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
