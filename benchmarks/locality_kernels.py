"""The locality feed-forward's middle alone, forward + backward: eager modules, fused Triton kernels with
each tile set of ``--tiles``, and the modules compiled by inductor, in the same process.

``set_fused_locality`` replaces the stretch ``BN -> act -> DW 3x3 -> BN -> act -> SE`` between the two 1x1
convs of every LocalViT feed-forward. ``train_throughput.py`` times whole training steps; this times that
stretch alone, at LocalViT-T's shape (768 channels at 14x14, batch 256, h-swish, SE, bf16 autocast,
channels_last), so that a GPU says three things: how much faster the kernels run it than the eager modules,
whether inductor does as well from the same modules, and which tiles suit the kernels (``TILE_SETS``: the
looping kernels with their loads pipelined or not, wider tiles).

Each call is the middle's forward and ``torch.autograd.grad`` of its output w.r.t. its input and
parameters, with a fixed output gradient, on a GPU captured once as a CUDA graph and replayed (``--no-graph``:
launched eagerly, which times the host's work). The eager modules are the baseline: rounds alternate between
the baseline and the path timed (baseline, path, baseline, ...); the ratio is the median of the per-round
speed-ups. Effective bandwidth is the bytes ``step_traffic.py`` counts for the path (each operator or
kernel pass reading and writing its tensors once; counted on the CPU at a small batch and scaled to
``--batch-size``) over its median time. ``--max-seconds`` bounds the run; a path still running at the
deadline is recorded as an error and the rest skipped.

GPU (about 30 s, of which the compiled path 15-20):

    python benchmarks/locality_kernels.py --out results/bench/locality_kernels.json

CPU plumbing check (Triton's interpreter: the times say nothing):

    TRITON_INTERPRET=1 python benchmarks/locality_kernels.py --device cpu --batch-size 2 --image-size 4 \\
        --embed-dim 16 --se-reduction 4 --steps 1 --rounds 1 --max-seconds 200 --out /tmp/lk.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from bench_common import before_deadline, environment, synchronize, write_json
from step_traffic import TrafficCounter, TritonKernelCounter, per_image_at

import lvit.models.locality_triton as fused
from lvit.engine.graphed import capture_graph
from lvit.engine.loop import training_autocast
from lvit.models.locality import LocalityFeedForward

Tiles = fused.Tiles
# Tile sets to time against the defaults (``fused.TILES``): each overrides some kinds of launch. All
# compile without spilling on sm_90 (ptxas, bf16, h-swish + SE; tests/test_locality_triton.py checks).
TILE_SETS: dict[str, dict[str, Tiles]] = {
    "default": {},
    "sums-map-wide": {"sums": Tiles(32, 64, 8, stages=3), "per_image": Tiles(32, 64, 8, stages=3),
                      "map": Tiles(128, 64, 8)},
    # the looping kernels as they ran before their loads were pipelined (the H100 run at 5f8407f)
    "unpipelined": {"sums": Tiles(16, 64, 4, stages=1), "per_image": Tiles(16, 64, 4, stages=1)},
    # half-height one-tile kernels: fewer registers per thread, so more resident warps and bytes in flight
    # for the register-heavy input gradient (94 registers, 20 warps by default; 1.6x its floor on an H200)
    "map-narrow": {"map": Tiles(32, 64, 4)},
}


def build_middle(args: argparse.Namespace, device: torch.device) -> nn.Sequential:
    """LocalViT-T's middle (``BN, act, DW, BN, act`` on 4 x 192 channels, then SE unless ``args.attn`` is
    "none"), random batch-norm affines."""
    torch.manual_seed(0)
    ffn = LocalityFeedForward(args.embed_dim, 4.0, act="hswish", attn=args.attn,
                              se_reduction=args.se_reduction)
    middle = ffn.conv[1:7 if args.attn == "se" else 6].to(device).train()
    for bn in (middle[0], middle[3]):
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    return middle


def add_middle_arguments(parser: argparse.ArgumentParser) -> None:
    """The options :func:`build_middle` reads (the middle's shape and SE), shared with ``kernel_issue.py``."""
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=14, help="side of the token grid (224 / 16)")
    parser.add_argument("--embed-dim", type=int, default=192, help="LocalViT-T's; the middle has 4x")
    parser.add_argument("--attn", choices=("se", "none"), default="se", help="SE after the middle or not")
    parser.add_argument("--se-reduction", type=int, default=192,
                        help="SE's reduction: LocalViT-T's 192 (hidden 4); the SE-4 rows' 4 (hidden 192)")


def fused_call(middle: nn.Sequential) -> Callable[[torch.Tensor], torch.Tensor]:
    bn1, _, dw, bn2, _, *se = middle
    return lambda h: fused.locality_middle(h, bn1, dw, bn2, "hswish", *se)


@contextlib.contextmanager
def tiles_of(name: str):  # noqa: ANN201
    """``fused.TILES`` with the overrides of ``TILE_SETS[name]`` while inside."""
    defaults = fused.TILES
    fused.TILES = defaults | TILE_SETS[name]
    try:
        yield
    finally:
        fused.TILES = defaults


def make_runner(path: Callable[[torch.Tensor], torch.Tensor], middle: nn.Sequential,
                args: argparse.Namespace, device: torch.device) -> Callable[[int], float]:
    """``run(steps) -> ms per call`` of forward + input and parameter gradients of ``path``."""
    torch.manual_seed(1)
    # the expand conv's output, as the training loop's autocast leaves it: bf16 on CUDA, fp32 on the CPU
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = (args.batch_size, 4 * args.embed_dim, args.image_size, args.image_size)
    h = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(h)
    inputs = [h.requires_grad_(), *middle.parameters()]

    def call() -> None:
        with training_autocast(device):
            out = path(h)
        torch.autograd.grad(out, inputs, grad)

    if args.graph and device.type == "cuda":
        # what the training loop's graphed step runs: the kernels alone. Without the graph the fused path's
        # time is its host-side work per call (at 3ba2c3e on an H200: 2.66 ms per call, where the training
        # step's kernel profile sums the middle's kernels to about 0.8 ms per block)
        call = capture_graph(call, device).replay

    def run(steps: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            call()
        synchronize(device)
        return (time.perf_counter() - start) * 1e3 / steps

    return run


def count_one_call(middle: nn.Sequential, fused_path: bool, args: argparse.Namespace, batch: int
                   ) -> TritonKernelCounter:
    """One call of the middle, eager modules or fused kernels, at ``batch`` images on the CPU: the forward
    under bf16 autocast (as the training loop runs it on a GPU), then the input and parameter gradients,
    under ``step_traffic.py``'s count. The result holds the bytes per operator (``.counter.bytes``) and, on
    the fused path, each kernel launch (``.launches``)."""
    shape = (batch, 4 * args.embed_dim, args.image_size, args.image_size)
    h = torch.randn(shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(h)
    path = fused_call(middle) if fused_path else middle
    kernels = TritonKernelCounter(TrafficCounter())
    kernels.active = True
    with kernels if fused_path else contextlib.nullcontext(), kernels.counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = path(h.requires_grad_())
        torch.autograd.grad(out, [h, *middle.parameters()], grad)
    return kernels


def counted_mb(fused_path: bool, args: argparse.Namespace) -> float:
    """MB one call moves at ``--batch-size`` by ``step_traffic.py``'s count, eager modules or fused kernels:
    counted at batches 4 and 8, which splits each operator's bytes into a part per image and a part per call
    (parameter gradients, per-channel rows)."""
    middle = build_middle(args, torch.device("cpu"))

    def count(batch: int) -> dict[str, float]:
        traffic = count_one_call(middle, fused_path, args, batch).counter.bytes
        return {f"{phase}/{op}": nbytes / 1e6 for (phase, op), nbytes in traffic.items()}

    per_image = per_image_at(args.batch_size, 4, count(4), count(8))
    return sum(per_image.values()) * args.batch_size


def paths(args: argparse.Namespace, middle: nn.Sequential) -> list[tuple[str, Callable[[], Any], Any]]:
    """(name, the context to run it in, the callable) of every path after the eager baseline, in order."""
    fused_paths = [(f"fused {name}", lambda name=name: tiles_of(name), fused_call(middle))
                   for name in args.tiles]
    compiled = [("compiled", contextlib.nullcontext, torch.compile(middle))] if args.compiled else []
    return fused_paths + compiled


def measure(baseline: Callable[[int], float], candidate: Callable[[int], float], args: argparse.Namespace
            ) -> dict[str, float]:
    candidate(args.warmup)  # compiles
    base, ours = [], []
    for _ in range(args.rounds):
        base.append(baseline(args.steps))
        ours.append(candidate(args.steps))
    return dict(ms=statistics.median(ours), eager_ms=statistics.median(base),
                speedup=statistics.median(b / o for b, o in zip(base, ours, strict=True)))


def main() -> None:
    args = parse_args()
    wall = time.monotonic()
    env = environment(args.device)
    deadline = wall + args.max_seconds
    device = torch.device(args.device)
    middle = build_middle(args, device)
    baseline = make_runner(middle, middle, args, device)
    baseline(args.warmup)
    mb = {"eager": counted_mb(False, args), "fused": counted_mb(True, args)}
    rows = []
    for name, context, path in paths(args, middle):
        row: dict[str, Any] = dict(path=name)
        start = time.monotonic()
        try:
            with context():
                candidate = make_runner(path, middle, args, device)
                row.update(before_deadline(deadline, measure, baseline, candidate, args))
        except Exception as error:  # one path failing must not lose the others' numbers
            row["error"] = f"{type(error).__name__}: {error}"[:500]
        row["seconds"] = round(time.monotonic() - start, 1)
        if "ms" in row and name.startswith("fused"):
            row["gb_s"] = mb["fused"] / row["ms"]  # MB per ms
        rows.append(row)
        print(row, flush=True)
    print(markdown(rows, mb, env, args))
    write_json(args.out, "locality_kernels", env, args, wall, counted_mb=mb, rows=rows)


def markdown(rows: list[dict[str, Any]], mb: dict[str, float], env: dict[str, Any], args: argparse.Namespace
             ) -> str:
    eager_ms = [r["eager_ms"] for r in rows if "eager_ms" in r]
    eager = statistics.median(eager_ms) if eager_ms else float("nan")
    lines = [
        f"### The locality middle alone, forward + backward ({env['date'][:10]})", "",
        f"device {env['device']}; torch {env['torch']}; batch {args.batch_size}, {4 * args.embed_dim} "
        f"channels at {args.image_size}x{args.image_size}, h-swish, SE; {env['precision']}; "
        f"{'CUDA-graph replays' if args.graph and args.device.startswith('cuda') else 'eager launches'}; "
        f"counted: eager "
        f"{mb['eager']:.0f} MB, fused {mb['fused']:.0f} MB per call", "",
        "| path | ms | eager ms, same rounds | speed-up over eager | effective GB/s |",
        "|---|---:|---:|---:|---:|",
        f"| eager modules (median of all rounds) | {eager:.3f} | | 1 | {mb['eager'] / eager:.0f} |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['error'].splitlines()[0][:80]} | | | |")
        else:
            gb_s = f"{r['gb_s']:.0f}" if "gb_s" in r else ""
            lines.append(f"| {r['path']} | {r['ms']:.3f} | {r['eager_ms']:.3f} | {r['speedup']:.3f} "
                         f"| {gb_s} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_middle_arguments(parser)
    parser.add_argument("--tiles", nargs="+", choices=list(TILE_SETS), default=list(TILE_SETS),
                        help="tile sets of the fused kernels to time, in order")
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the modules compiled by inductor (last: it compiles for 15-20 s)")
    parser.add_argument("--graph", action=argparse.BooleanOptionalAction, default=True,
                        help="on a GPU, time each path's call replayed as a CUDA graph (its kernels alone)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="deadline for the whole run")
    parser.add_argument("--out", help="write the results as JSON to this path")
    return parser.parse_args()


if __name__ == "__main__":
    main()
