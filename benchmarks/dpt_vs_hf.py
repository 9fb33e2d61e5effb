"""DPT inference: lvit against HuggingFace ``transformers`` DPT, in the same process.

For each of ``dpt_hybrid`` and ``dpt_large`` at 384x384 it measures

* throughput (images/s) at batch 32, eager, bf16 on GPU (fp32 on CPU), lvit vs HF, and their ratio;
* batch-1 latency (median ms): HF eager, lvit eager, and lvit under
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: batch-1 DPT is launch-bound on an H100).

Same weights where lvit can load HF's layout (ViT backbones: ``dpt_large``), checked by comparing the
two models' fp32 outputs before timing. HF's DPT-Hybrid uses a BiT backbone whose state_dict lvit does not
convert, so the hybrid pair is timed with each model's own random weights (the same architecture and
FLOPs; timing does not depend on the values). Measurements alternate HF / lvit per repeat.

    pip install transformers   # optional extra, present on the lent GPU machine
    python benchmarks/dpt_vs_hf.py                                   # GPU defaults
    python benchmarks/dpt_vs_hf.py --device cpu --batch-size 2 --iters 2 --no-compile
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import timm
import torch
import torch.nn as nn
import transformers
from transformers import DPTConfig, DPTForDepthEstimation

import lvit

HF_CONFIGS: dict[str, DPTConfig] = {
    # official DPT-Large: ViT-L/16 at 384, taps 5/11/17/23; eps as timm's ViT so that outputs can match
    "dpt_large": DPTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, backbone_out_indices=[5, 11, 17, 23],
                           neck_hidden_sizes=[256, 512, 1024, 1024], layer_norm_eps=1e-6),
    # HF's hybrid defaults are the Intel/dpt-hybrid-midas architecture (BiT-R50 stages + ViT-B/16)
    "dpt_hybrid": DPTConfig(is_hybrid=True, backbone_out_indices=[2, 5, 8, 11],
                            neck_hidden_sizes=[256, 512, 768, 768], layer_norm_eps=1e-6),
}


class HFDepth(nn.Module):
    """HF DPT with lvit's call convention: images in, (B, H, W) inverse depth out."""

    def __init__(self, config: DPTConfig) -> None:
        super().__init__()
        self.model = DPTForDepthEstimation(config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).predicted_depth


def build_pair(name: str, device: torch.device) -> tuple[nn.Module, nn.Module, float | None]:
    hf = HFDepth(HF_CONFIGS[name]).eval()
    ours = lvit.create_model(name, task="depth", readout="project").eval()
    max_diff = None
    if name != "dpt_hybrid":
        lvit.load_pretrained(ours, hf.model.state_dict())
        with torch.no_grad():
            x = torch.randn(1, 3, 384, 384)
            max_diff = (ours(x) - hf(x)).abs().max().item()
    return hf.to(device), ours.to(device), max_diff


def timer(fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_seconds(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, args, device) -> float:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with torch.inference_mode(), autocast:
        for _ in range(args.warmup):
            model(x)
        return statistics.median(timer(lambda: model(x), device) for _ in range(args.iters))


def bench(name: str, args: argparse.Namespace) -> dict[str, float | None]:
    device = torch.device(args.device)
    hf, ours, max_diff = build_pair(name, device)
    batch = torch.randn(args.batch_size, 3, 384, 384, device=device)
    single = batch[:1].clone()
    result: dict[str, float | None] = dict(max_abs_diff_fp32=max_diff)
    result["hf_images_s"] = args.batch_size / median_seconds(hf, batch, args, device)
    result["lvit_images_s"] = args.batch_size / median_seconds(ours, batch, args, device)
    result["hf_b1_ms"] = 1e3 * median_seconds(hf, single, args, device)
    result["lvit_b1_ms"] = 1e3 * median_seconds(ours, single, args, device)
    if args.compile:
        compiled = torch.compile(ours, mode="reduce-overhead")
        result["lvit_compiled_b1_ms"] = 1e3 * median_seconds(compiled, single, args, device)
    return result


def markdown(results: dict[str, dict[str, float | None]], args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [
        f"### DPT inference vs HuggingFace transformers ({dt.date.today()})",
        "",
        f"device {device}; torch {torch.__version__}, timm {timm.__version__}, transformers "
        f"{transformers.__version__}, lvit {lvit.__version__}; 384x384, {precision}, eager unless noted; "
        f"median of {args.iters} after {args.warmup} warm-up",
        "",
        f"| model | same weights: max abs diff (fp32) | HF img/s (b{args.batch_size}) | lvit img/s | ratio "
        "| HF b1 ms | lvit b1 ms | lvit compiled b1 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ratio = r["lvit_images_s"] / r["hf_images_s"]
        compiled_ms = fmt(r.get("lvit_compiled_b1_ms"), ".1f")
        lines.append(
            f"| {name} | {fmt(r['max_abs_diff_fp32'], '.2e')} | {r['hf_images_s']:.1f} "
            f"| {r['lvit_images_s']:.1f} | {ratio:.2f} | {r['hf_b1_ms']:.1f} | {r['lvit_b1_ms']:.1f} "
            f"| {compiled_ms} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(HF_CONFIGS),
                        default=["dpt_hybrid", "dpt_large"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--out", help="append the markdown table to this file")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    table = markdown({name: bench(name, args) for name in args.models}, args)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
