"""Training throughput of the LocalViT models against timm's DeiT-T, measured in the same process.

The cost of locality is reported as a ratio: images/s of a model divided by images/s of
``deit_tiny_patch16_224`` under the same settings, measured in the same process, interleaved
(baseline, candidate, baseline, ...), so clock drift and thermal state hit both alike. Method as timm's
``benchmark.py``: a few warm-up steps (compilation happens there), then timed steps of forward +
backward + AdamW, synchronised at the ends of the timed window only.

    python benchmarks/train_throughput.py                        # GPU: bf16, batch 256, eager and compiled
    python benchmarks/train_throughput.py --device cpu --batch-size 8 --steps 3 --modes eager

Every distinct model of the LocalViT tables is measured (read from ``lvit.experiments``), plus
``localvit_tiny``. The markdown table goes to stdout and, with ``--out``, is appended to a file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import timm
import torch
import torch.nn as nn

import lvit
from lvit.experiments import list_experiments

BASELINE = ("deit_tiny_patch16_224", {})


def table_models() -> Iterator[tuple[str, dict[str, Any]]]:
    """Distinct (model, kwargs) pairs of the LocalViT classification tables, declaration order."""
    seen: set[str] = set()
    candidates = [("localvit_tiny", {})]
    for experiment in list_experiments("localvit"):
        if experiment.task == "classification":
            # rows with no model are published-only baselines that lvit does not build
            candidates += [(row.model, dict(row.model_kwargs)) for row in experiment.rows if row.model]
    for name, kwargs in candidates:
        key = f"{name}{sorted(kwargs.items())}"
        if key not in seen:
            seen.add(key)
            yield name, kwargs


def train_step_fn(model: nn.Module, device: torch.device, compiled: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss()
    forward = torch.compile(model) if compiled else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast:
            loss = loss_fn(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def images_per_second(name: str, kwargs: dict[str, Any], args: argparse.Namespace, compiled: bool) -> float:
    device = torch.device(args.device)
    model = lvit.create_model(name, **kwargs).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = train_step_fn(model, device, compiled)
    images = torch.randn(args.batch_size, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    for _ in range(args.warmup):
        step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.batch_size * args.steps / (time.perf_counter() - start)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for mode in args.modes:
        compiled = mode == "compiled"
        for name, kwargs in table_models():
            # Interleave: baseline before and after each candidate, ratio against their mean.
            before = images_per_second(*BASELINE, args, compiled)
            ours = images_per_second(name, kwargs, args, compiled)
            after = images_per_second(*BASELINE, args, compiled)
            baseline = statistics.mean([before, after])
            rows.append(dict(mode=mode, model=name, kwargs=kwargs, images_s=ours, deit_images_s=baseline,
                             ratio=ours / baseline, baseline_drift=abs(before - after) / baseline))
            print(f"{mode:9s} {name} {kwargs}: {ours:.1f} img/s, ratio {ours / baseline:.3f}", flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
    lines = [
        f"### Training throughput vs timm DeiT-T ({dt.date.today()})",
        "",
        f"device {device}; torch {torch.__version__}, timm {timm.__version__}, lvit {lvit.__version__}; "
        f"batch {args.batch_size}, 224x224, {precision}, AdamW, {args.warmup} warm-up + {args.steps} timed "
        f"steps; channels_last={args.channels_last}",
        "",
        "| mode | model | kwargs | images/s | DeiT-T images/s | ratio | baseline drift |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['mode']} | {r['model']} | {r['kwargs'] or ''} | {r['images_s']:.1f} "
        f"| {r['deit_images_s']:.1f} | {r['ratio']:.3f} | {r['baseline_drift']:.1%} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--modes", nargs="+", choices=("eager", "compiled"), default=["eager", "compiled"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", help="append the markdown table to this file")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    table = markdown(measure(args), args)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
