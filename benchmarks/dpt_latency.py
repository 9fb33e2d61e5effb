"""Inference latency of DPT-Hybrid and DPT-Large vs their bare timm backbones, in one process.

Method of timm's ``benchmark.py`` (random input, eval, ``inference_mode``, warm-up then timed steps with
``perf_counter``; CUDA synchronised), batch 1 at 384x384. The baseline is the timm backbone's own forward
(``vit_base_r50_s16_384`` / ``vit_large_patch16_384``, classifier included), so the DPT overhead is the
decoder plus the Read/Reassemble stages. Models and baselines are timed interleaved, round by round, so a
change in machine load hits both alike; the median over rounds is reported.

GPU (about 15 s on an H100; not needed for the issue's targets, which ``dpt_vs_hf.py`` measures):

    python benchmarks/dpt_latency.py --device cuda --amp --iters 50 --out results/bench/dpt_latency.json

CPU smoke test:

    .venv/bin/python benchmarks/dpt_latency.py --warmup 1 --iters 3 --threads 2 --size 64 --out /tmp/l.json

Prints one markdown row per model: DPT ms, backbone ms, DPT / backbone; ``--out`` writes them as JSON.
A model is not started once ``--max-seconds`` have passed (recorded as skipped).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time

import timm
import torch
import torch.nn as nn
from tqdm import tqdm

import lvit

PAIRS: dict[str, str] = {"dpt_hybrid": "vit_base_r50_s16_384", "dpt_large": "vit_large_patch16_384"}


def _step_ms(model: nn.Module, x: torch.Tensor, amp: bool) -> float:
    device_type = x.device.type
    with torch.autocast(device_type, dtype=torch.float16, enabled=amp):
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if device_type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


@torch.inference_mode()
def time_pair(dpt: nn.Module, backbone: nn.Module, x: torch.Tensor, warmup: int, iters: int,
              amp: bool) -> tuple[float, float]:
    """Median ms per forward of each model, timed alternately."""
    for _ in range(warmup):
        _step_ms(dpt, x, amp), _step_ms(backbone, x, amp)
    times: dict[str, list[float]] = {"dpt": [], "backbone": []}
    for _ in tqdm(range(iters), desc="timed rounds", leave=False):
        times["dpt"].append(_step_ms(dpt, x, amp))
        times["backbone"].append(_step_ms(backbone, x, amp))
    return statistics.median(times["dpt"]), statistics.median(times["backbone"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA); default fp32")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="start no model after this")
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    precision = "fp16 autocast" if args.amp else "fp32"
    print(f"device: {name}; threads {torch.get_num_threads()}; torch {torch.__version__}; "
          f"timm {timm.__version__}; batch 1, {args.size}x{args.size}, {precision}, "
          f"median of {args.iters} rounds after {args.warmup} warm-up")
    print("| model | DPT ms | backbone | backbone ms | DPT / backbone |")
    print("| --- | --- | --- | --- | --- |")
    x = torch.randn(1, 3, args.size, args.size, device=device)
    deadline = time.monotonic() + args.max_seconds
    rows: list[dict[str, object]] = []
    for model_name in args.models:
        row: dict[str, object] = dict(model=model_name, backbone=PAIRS[model_name])
        rows.append(row)
        if time.monotonic() > deadline:
            row["error"] = "skipped: --max-seconds spent"
            print(f"| {model_name} | skipped: --max-seconds spent | | | |", flush=True)
            continue
        with device:  # initialise on the GPU: CPU init of DPT-Large alone costs seconds
            dpt = lvit.create_model(model_name).eval()  # any input size (multiple of 32)
            backbone = timm.create_model(PAIRS[model_name], img_size=args.size).eval()
        dpt_ms, backbone_ms = time_pair(dpt, backbone, x, args.warmup, args.iters, args.amp)
        row.update(dpt_ms=dpt_ms, backbone_ms=backbone_ms, ratio=dpt_ms / backbone_ms)
        print(f"| {model_name} | {dpt_ms:.1f} | {PAIRS[model_name]} | {backbone_ms:.1f} | "
              f"{dpt_ms / backbone_ms:.2f} |", flush=True)
        del dpt, backbone
    if args.out:
        date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        result = dict(benchmark="dpt_latency", device=name, torch=torch.__version__, timm=timm.__version__,
                      lvit=lvit.__version__, date=date, precision=precision,
                      cpu_threads=torch.get_num_threads(), settings=vars(args), rows=rows)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
