"""DPT inference: lvit against HuggingFace ``transformers`` DPT, in the same process.

For each of ``dpt_hybrid`` and ``dpt_large`` at 384x384 it measures

* throughput (images/s) at batch 32, eager, bf16 autocast on GPU (fp32 on CPU), lvit vs HF, and their ratio;
  in the same rounds, lvit with ``set_low_precision_norms`` (GroupNorm and LayerNorm in bf16 rather than
  autocast's fp32; its fusion output is compared with the default's);
* batch-1 latency (median ms), eager, HF vs lvit;
* on GPU, for ``--graph-models`` (default both): lvit's batch-1 latency replaying one CUDA graph of its eager
  bf16 forward (captured by hand in about a second; checked against the eager output first): batch-1 DPT is
  launch-bound on an H100, and a graph removes the launches without a compile;
* then, for ``--fast-batch-models`` (default ``dpt_hybrid``): throughput at ``--batch-size`` of lvit in
  channels_last, eager (a step of its own, which separates the layout's share of any gain; the whole model
  and, in the same rounds, the decoder alone, since CUDA's GroupNorm undoes the layout) and then compiled
  (``torch.compile``, default mode), each against HF eager again in alternating rounds,
  after checking the compiled output against the eager one: the issue's batch-32 target leaves lvit free to
  use what it has, and the fusion blocks and the head are convolutions on 96x96 to 384x384 maps, for which
  channels_last (NHWC) is the layout of cuDNN's tensor-core kernels (an NCHW input is transposed);
* last, for ``--compile-models`` (default ``dpt_hybrid``): lvit's batch-1 latency under
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs plus fused kernels; the compile takes a minute).

HF and lvit are timed in alternating rounds (HF, lvit, HF, ...); each figure is the median over rounds.
Same weights where lvit can load HF's layout (ViT backbones: ``dpt_large``), checked by the max abs
difference of the two models' fp32 outputs (TF32 off) before timing. HF's DPT-Hybrid uses a BiT backbone
whose state_dict lvit does not convert, so the hybrid pair is timed with each model's own random weights
(same architecture and FLOPs; timing does not depend on the values). HF's BiT backbone config is given
explicitly, so nothing is fetched from the Hub. ``--max-seconds`` bounds the run: work still going at the
deadline is interrupted and recorded as an error, as is any failure of one model or mode.

GPU (about 60 s on an H100, compile included; needs the ``bench`` extra, i.e. transformers):

    HF_HUB_OFFLINE=1 python benchmarks/dpt_vs_hf.py --out results/bench/dpt_vs_hf.json

CPU smoke test:

    HF_HUB_OFFLINE=1 python benchmarks/dpt_vs_hf.py --device cpu --models dpt_hybrid --size 64 \\
        --batch-size 2 --warmup 1 --rounds 1 --b1-rounds 1 --compile-models --out /tmp/dpt_vs_hf.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import transformers
from bench_common import allow_tf32, before_deadline, environment, synchronize, write_json
from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

import lvit
from lvit.engine.graphed import capture_graph
from lvit.models.dpt import set_low_precision_norms

# Intel/dpt-hybrid-midas's BiT-R50 stem and stages 1-3, as DPTConfig(is_hybrid=True) fills in by default;
# spelled out so that no transformers version looks anything up.
BIT_HYBRID = dict(
    layer_type="bottleneck",
    depths=[3, 4, 9],
    out_features=["stage1", "stage2", "stage3"],
    embedding_dynamic_padding=True,
    global_padding="SAME",
)


def hf_config(name: str, size: int) -> DPTConfig:
    """HF configs of the official models at ``size``; eps as timm's ViT so that same-weight outputs match."""
    if name == "dpt_large":  # ViT-L/16, taps 5/11/17/23
        return DPTConfig(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            backbone_out_indices=[5, 11, 17, 23],
            neck_hidden_sizes=[256, 512, 1024, 1024],
            layer_norm_eps=1e-6,
            image_size=size,
        )
    # HF's hybrid checks the input size against image_size and needs the BiT feature map's shape (stride 16)
    return DPTConfig(
        is_hybrid=True,
        backbone_config=BitConfig(**BIT_HYBRID),
        backbone_out_indices=[2, 5, 8, 11],
        neck_hidden_sizes=[256, 512, 768, 768],
        layer_norm_eps=1e-6,
        image_size=size,
        backbone_featmap_shape=[1, 1024, size // 16, size // 16],
    )


class HFDepth(nn.Module):
    """HF DPT with lvit's call convention: images in, (B, H, W) inverse depth out."""

    def __init__(self, config: DPTConfig) -> None:
        super().__init__()
        self.model = DPTForDepthEstimation(config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).predicted_depth



def build_pair(name: str, args: argparse.Namespace) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(HF, lvit) on the device, eval; info: HF's attention implementation, same-weights max diff."""
    device = torch.device(args.device)
    with device:  # initialise on the GPU: CPU init of 340M parameters alone costs seconds
        hf = HFDepth(hf_config(name, args.size)).eval()
        ours = lvit.create_model(name, task="depth", readout="project").eval()
    info: dict[str, Any] = dict(hf_attn_implementation=getattr(hf.model.config, "_attn_implementation", None))
    if name != "dpt_hybrid":
        lvit.load_pretrained(ours, hf.model.state_dict())
        info["max_abs_diff_fp32"] = max_abs_diff(hf, ours, args)
    return hf, ours, info


def max_abs_diff(hf: nn.Module, ours: nn.Module, args: argparse.Namespace) -> float:
    """fp32 output difference at batch 1, TF32 off so that it measures the weights, not the matmul mode."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            x = torch.randn(1, 3, args.size, args.size, device=args.device)
            return (ours(x) - hf(x)).abs().max().item()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def seconds_per_call(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    synchronize(x.device)
    start = time.perf_counter()
    model(x)
    synchronize(x.device)
    return time.perf_counter() - start


def inference_autocast(device: torch.device) -> torch.autocast:
    """bf16 on the GPU, as the issue's targets are stated; fp32 on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def interleaved(
    models: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, warmup: int, rounds: int
) -> dict[str, float]:
    """Median seconds per call of each model, timed in alternating rounds after ``warmup`` calls each."""
    device = x.device
    times: dict[str, list[float]] = {key: [] for key in models}
    with torch.inference_mode(), inference_autocast(device):
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(rounds):
            for key, model in models.items():
                times[key].append(seconds_per_call(model, x))
    return {key: statistics.median(values) for key, values in times.items()}


class Bench:
    """Runs each step under one shared deadline, recording results and errors per model."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.max_seconds
        self.results: dict[str, dict[str, Any]] = {}

    def step(self, name: str, what: str, fn: Callable[[], dict[str, Any]]) -> None:
        result = self.results.setdefault(name, {})
        start = time.monotonic()
        try:
            result.update(before_deadline(self.deadline, fn))
        except Exception as error:  # one model/mode failing must not lose the others' numbers
            result[f"{what}_error"] = f"{type(error).__name__}: {error}"[:500]
        result[f"{what}_seconds"] = round(time.monotonic() - start, 2)
        print(
            f"{name} {what}: {result.get(f'{what}_error', 'ok')} ({result[f'{what}_seconds']} s)", flush=True
        )

    def eager(self, name: str) -> dict[str, Any]:
        args, device = self.args, torch.device(self.args.device)
        hf, ours, info = build_pair(name, args)
        low_norms = copy.deepcopy(ours)
        set_low_precision_norms(low_norms)
        batch = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
        seconds = interleaved(dict(hf=hf, lvit=ours, low_norms=low_norms), batch, args.warmup, args.rounds)
        single = torch.randn(1, 3, args.size, args.size, device=device)
        b1 = interleaved(dict(hf=hf, lvit=ours), single, args.warmup, args.b1_rounds)
        # compared before the head: a freshly initialised depth head may output zeros (final ReLU)
        with torch.inference_mode(), inference_autocast(device):
            fusion = ours.forward_features(batch[:2])[-1].float()
            diff = (low_norms.forward_features(batch[:2])[-1].float() - fusion).abs().max().item()
        return dict(
            info,
            hf_images_s=args.batch_size / seconds["hf"],
            lvit_images_s=args.batch_size / seconds["lvit"],
            ratio=seconds["hf"] / seconds["lvit"],
            lvit_low_norms_images_s=args.batch_size / seconds["low_norms"],
            low_norms_ratio=seconds["hf"] / seconds["low_norms"],
            low_norms_fusion_max_abs_diff=diff,
            fusion_max=fusion.abs().max().item(),
            hf_b1_ms=1e3 * b1["hf"],
            lvit_b1_ms=1e3 * b1["lvit"],
        )

    def graphed(self, name: str) -> dict[str, Any]:
        args, device = self.args, torch.device(self.args.device)
        with device:
            ours = lvit.create_model(name, task="depth", readout="project").eval()
        static = torch.randn(1, 3, args.size, args.size, device=device)
        # autocast's weight-cast cache must be off: the graph would keep reading casts freed on context exit
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            captured: dict[str, torch.Tensor] = {}

            def forward() -> None:
                captured["depth"] = ours(static)

            # the warm-up passes drop their outputs as they go: none is freed while capturing
            graph = capture_graph(forward, device, warm_up=lambda: ours(static))

            def replay(x: torch.Tensor) -> torch.Tensor:
                static.copy_(x)
                graph.replay()
                return captured["depth"]

            x = torch.randn_like(static)
            eager_out = ours(x).float()
            # a fresh depth head may output all zeros (final ReLU): then the check is the absolute difference
            diff = (replay(x).float() - eager_out).abs().max().item()
            scale = eager_out.abs().max().item()
        b1 = interleaved(dict(lvit=replay), x, args.warmup, args.b1_rounds)
        return dict(lvit_graph_b1_ms=1e3 * b1["lvit"], graph_vs_eager_max_abs_diff=diff, eager_out_max=scale)

    def channels_last(self, name: str) -> dict[str, Any]:
        """lvit eager in channels_last, the whole model and the decoder alone: how much of a compiled gain is
        the layout (seconds, no compile). CUDA's GroupNorm makes a channels_last input contiguous, so in the
        whole Hybrid every GroupNorm of the ResNet costs two layout copies; the decoder alone (everything but
        the backbone, all convolutions) shows what the layout gives the convolutions it was meant for."""
        args, device = self.args, torch.device(self.args.device)
        hf, ours, _ = build_pair(name, args)
        decoder_only = copy.deepcopy(ours)
        for part, module in decoder_only.named_children():
            if part != "backbone":
                module.to(memory_format=torch.channels_last)
        whole = ours.to(memory_format=torch.channels_last)
        batch = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
        seconds = interleaved(
            dict(hf=hf, lvit=lambda x: whole(x.contiguous(memory_format=torch.channels_last)),
                 decoder=decoder_only),
            batch, args.warmup, args.rounds,
        )
        return dict(lvit_channels_last_images_s=args.batch_size / seconds["lvit"],
                    channels_last_ratio=seconds["hf"] / seconds["lvit"],
                    lvit_decoder_channels_last_images_s=args.batch_size / seconds["decoder"],
                    decoder_channels_last_ratio=seconds["hf"] / seconds["decoder"])

    def fast_batch(self, name: str) -> dict[str, Any]:
        args, device = self.args, torch.device(self.args.device)
        hf, ours, _ = build_pair(name, args)
        fast = torch.compile(ours.to(memory_format=torch.channels_last))
        batch = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
        start = time.monotonic()
        # compiled as timed; checked against eager first
        with torch.inference_mode(), inference_autocast(device):
            eager_out = ours(batch).float()
            diff = (fast(batch.contiguous(memory_format=torch.channels_last)).float() - eager_out).abs().max()
        seconds = interleaved(
            dict(hf=hf, lvit=lambda x: fast(x.contiguous(memory_format=torch.channels_last))),
            batch, args.warmup, args.rounds,
        )
        return dict(
            fast_vs_eager_max_abs_diff=diff.item(),
            eager_out_max=eager_out.abs().max().item(),
            hf_images_s_again=args.batch_size / seconds["hf"],
            lvit_fast_images_s=args.batch_size / seconds["lvit"],
            fast_ratio=seconds["hf"] / seconds["lvit"],
            fast_compile_and_timing_seconds=round(time.monotonic() - start, 1),
        )

    def compiled(self, name: str) -> dict[str, Any]:
        args, device = self.args, torch.device(self.args.device)
        with device:
            ours = lvit.create_model(name, task="depth", readout="project").eval()
        model = torch.compile(ours, mode="reduce-overhead")
        single = torch.randn(1, 3, args.size, args.size, device=device)
        start = time.monotonic()
        # reduce-overhead records its CUDA graph on the ~3rd call: warm up with at least that many
        b1 = interleaved(dict(lvit=model), single, max(args.warmup, 3), args.b1_rounds)
        return dict(
            lvit_compiled_b1_ms=1e3 * b1["lvit"],
            compile_and_warmup_seconds=round(time.monotonic() - start, 1),
        )


def markdown(results: dict[str, dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    def fmt(r: dict[str, Any], key: str, spec: str) -> str:
        return format(r[key], spec) if key in r else "n/a"

    lines = [
        f"### DPT inference vs HuggingFace transformers ({env['date'][:10]})",
        "",
        f"device {env['device']}; torch {env['torch']}, timm {env['timm']}, transformers "
        f"{env['transformers']}, lvit {env['lvit']}; {args.size}x{args.size}, {env['precision']}, eager "
        f"unless noted; medians of interleaved rounds ({args.rounds} at b{args.batch_size}, "
        f"{args.b1_rounds} at b1)",
        "",
        f"| model | same weights: max abs diff (fp32) | HF img/s (b{args.batch_size}) | lvit img/s | ratio "
        "| lvit low-precision norms img/s | ratio "
        "| HF b1 ms | lvit b1 ms | lvit CUDA-graph b1 ms | lvit compiled b1 ms "
        f"| lvit channels_last img/s (b{args.batch_size}) | ratio "
        "| decoder alone channels_last img/s | ratio "
        f"| lvit compiled channels_last img/s (b{args.batch_size}) | HF img/s, same rounds | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {fmt(r, 'max_abs_diff_fp32', '.2e')} | {fmt(r, 'hf_images_s', '.1f')} "
            f"| {fmt(r, 'lvit_images_s', '.1f')} | {fmt(r, 'ratio', '.2f')} "
            f"| {fmt(r, 'lvit_low_norms_images_s', '.1f')} | {fmt(r, 'low_norms_ratio', '.2f')} "
            f"| {fmt(r, 'hf_b1_ms', '.1f')} "
            f"| {fmt(r, 'lvit_b1_ms', '.1f')} | {fmt(r, 'lvit_graph_b1_ms', '.2f')} "
            f"| {fmt(r, 'lvit_compiled_b1_ms', '.2f')} | {fmt(r, 'lvit_channels_last_images_s', '.1f')} "
            f"| {fmt(r, 'channels_last_ratio', '.2f')} "
            f"| {fmt(r, 'lvit_decoder_channels_last_images_s', '.1f')} "
            f"| {fmt(r, 'decoder_channels_last_ratio', '.2f')} | {fmt(r, 'lvit_fast_images_s', '.1f')} "
            f"| {fmt(r, 'hf_images_s_again', '.1f')} | {fmt(r, 'fast_ratio', '.2f')} |"
        )
    errors = [
        f"- {name} {key}: {value.splitlines()[0]}"
        for name, r in results.items()
        for key, value in r.items()
        if key.endswith("_error")
    ]
    return "\n".join(lines + errors) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--models", nargs="+", choices=("dpt_hybrid", "dpt_large"), default=["dpt_hybrid", "dpt_large"]
    )
    parser.add_argument(
        "--compile-models",
        nargs="*",
        choices=("dpt_hybrid", "dpt_large"),
        default=["dpt_hybrid"],
        help="b1 reduce-overhead latency of these (none: empty)",
    )
    parser.add_argument(
        "--graph-models",
        nargs="*",
        choices=("dpt_hybrid", "dpt_large"),
        default=["dpt_hybrid", "dpt_large"],
        help="b1 latency replaying a hand-captured CUDA graph (GPU only; none: empty)",
    )
    parser.add_argument(
        "--fast-batch-models",
        nargs="*",
        choices=("dpt_hybrid", "dpt_large"),
        default=["dpt_hybrid"],
        help="throughput at --batch-size of lvit compiled in channels_last vs HF eager (none: empty)",
    )
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per model at --batch-size")
    parser.add_argument("--b1-rounds", type=int, default=30, help="timed rounds per model at batch 1")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="deadline for the whole run")
    parser.add_argument("--out", help="write the results as JSON to this path")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    wall = time.monotonic()
    env = environment(args.device, transformers=transformers.__version__)  # code state at the start
    allow_tf32()
    bench = Bench(args)
    for name in args.models:
        bench.step(name, "eager", lambda name=name: bench.eager(name))
        gc.collect()  # free this pair's weights before building the next
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.device.startswith("cuda"):
        for name in args.graph_models:
            bench.step(name, "graph", lambda name=name: bench.graphed(name))
    # compiles last: the slowest and least certain steps must not cost the eager numbers. The batch-32
    # target first: CUDA-graph replay already meets the batch-1 one
    for name in args.fast_batch_models:
        bench.step(name, "channels_last", lambda name=name: bench.channels_last(name))
        bench.step(name, "fast_batch", lambda name=name: bench.fast_batch(name))
    for name in args.compile_models:
        bench.step(name, "compiled", lambda name=name: bench.compiled(name))
    print(markdown(bench.results, env, args))
    write_json(args.out, "dpt_vs_hf", env, args, wall, results=bench.results)


if __name__ == "__main__":
    main()
