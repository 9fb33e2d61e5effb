"""Where a training step's time goes: per-operator self time of ``localvit_tiny`` beside timm's DeiT-T.

``train_throughput.py`` says how much slower LocalViT-T trains than DeiT-T (0.52x compiled on an H200);
this says which operators the difference is made of, so that kernel work goes where the time is. Both
models run the same steps as there (fixed random batch, bf16 autocast on CUDA, channels_last, AdamW) under
``torch.profiler``; each operator's self time (device time on CUDA, CPU time on CPU) is summed over the
profiled steps and divided by their number. Rows are sorted by how much more time LocalViT-T spends in the
operator than DeiT-T, so the top rows are the cost of locality.

GPU (about 30 s):

    python benchmarks/step_profile.py --out results/bench/step_profile.json

CPU plumbing check (CPU times say nothing about a GPU):

    python benchmarks/step_profile.py --device cpu --batch-size 4 --image-size 64 --steps 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import allow_tf32, environment, write_json
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from train_throughput import BASELINE, HEADLINE, MODES, Model, build_runner


def operator_times(model: Model, args: argparse.Namespace) -> dict[str, float]:
    """Self time per operator (or CUDA kernel, ``--by kernel``; Python function on the host, ``--by host``)
    in ms per step, over ``args.steps`` profiled steps after a warm-up."""
    run = build_runner(model, args, args.mode)
    run(args.warmup)
    if args.by == "host":
        return host_times(run, args.steps)
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run(args.steps)
    # A kernel's time shows twice: as the kernel's own event and in the self device time of the operator
    # that launched it; keep one of the two views. The kernel view tells a depth-wise conv from a 1x1 one,
    # which the operator view (both aten::convolution) cannot.
    wanted = DeviceType.CUDA if args.by == "kernel" else DeviceType.CPU
    per_op: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.device_type != wanted:
            continue
        self_us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if self_us > 0:
            per_op[event.key[:120]] += self_us / 1000 / args.steps
    return dict(per_op)


def host_times(run: Callable[[int], float], steps: int) -> dict[str, float]:
    """cProfile's own time per Python function (built-ins included) in ms per step: where the host spends a
    step, e.g. in Triton's launcher against PyTorch's dispatch, for a step the GPU waits on. The wait for the
    GPU at the end of the steps shows as ``_cuda_synchronize``."""
    profiler = cProfile.Profile()
    profiler.enable()
    run(steps)
    profiler.disable()
    per_function: dict[str, float] = defaultdict(float)
    for (file, line, name), (_, _, own_seconds, _, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        per_function[where[:120]] += own_seconds * 1000 / steps
    return dict(per_function)


def compare(ours: dict[str, float], baseline: dict[str, float]) -> list[dict[str, Any]]:
    """One row per operator: ms per step in each model and the difference, largest difference first."""
    rows = [dict(op=op, ours_ms=ours.get(op, 0.0), deit_ms=baseline.get(op, 0.0)) for op in ours | baseline]
    for row in rows:
        row["extra_ms"] = row["ours_ms"] - row["deit_ms"]
    return sorted(rows, key=lambda r: -r["extra_ms"])


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    total_ours, total_deit = sum(r["ours_ms"] for r in rows), sum(r["deit_ms"] for r in rows)
    per = "Python function" if args.by == "host" else args.by
    unit = "host" if args.by == "host" else "device" if args.device.startswith("cuda") else "CPU"
    lines = [
        f"### {unit.capitalize()} time per {per} of one training step, {HEADLINE[0]} vs DeiT-T "
        f"({env['date'][:10]})",
        "",
        f"device {env['device']}; torch {env['torch']}, timm {env['timm']}, lvit {env['lvit']}; {args.mode}; "
        f"batch {args.batch_size}, {args.image_size}x{args.image_size}, {env['precision']}, "
        f"channels_last={args.channels_last}; mean over {args.steps} profiled steps",
        "",
        f"Total self time per step: {total_ours:.2f} ms vs {total_deit:.2f} ms "
        f"({total_ours - total_deit:+.2f} ms). Top {args.top} by extra time:",
        "",
        f"| {args.by} | {HEADLINE[0]} ms | DeiT-T ms | extra ms | share of the extra |",
        "|---|---:|---:|---:|---:|",
    ]
    extra = max(total_ours - total_deit, 1e-9)
    for r in rows[: args.top]:
        lines.append(f"| `{r['op']}` | {r['ours_ms']:.3f} | {r['deit_ms']:.3f} | {r['extra_ms']:+.3f} "
                     f"| {r['extra_ms'] / extra:.0%} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=MODES, default="eager",
                        help="train_throughput.py's modes. compiled: each transformer block compiled, as "
                             "train_throughput.py's default; fused: eager with the locality feed-forward's "
                             "Triton kernels")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling (compiles)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=15, help="operators listed in the table")
    parser.add_argument("--by", choices=("op", "kernel", "host"), default="op",
                        help="aten operators, or CUDA kernels (CUDA only: tells depth-wise from 1x1 convs), "
                             "or the host's Python functions (cProfile: what a host-bound step does)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for CUDA, as the training loop")
    parser.add_argument("--out", help="write every operator's row as JSON to this path")
    args = parser.parse_args()
    if args.channels_last is None:
        args.channels_last = args.device.startswith("cuda")
    if args.by == "kernel" and not args.device.startswith("cuda"):
        parser.error("--by kernel needs a CUDA device")
    # what build_runner reads besides the above: every model at its own patch size, blocks compiled
    args.patch_size, args.compile_scope = None, "blocks"
    return args


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    allow_tf32()
    rows = compare(operator_times(HEADLINE, args), operator_times(BASELINE, args))
    env = environment(args.device)
    print(markdown(rows, env, args))
    write_json(args.out, "step_profile", env, args, started, rows=rows)


if __name__ == "__main__":
    main()
