"""Training throughput of the LocalViT models against timm's DeiT-T, measured in the same process.

The cost of locality is reported as a ratio: images/s of a model divided by images/s of
``deit_tiny_patch16_224`` under the same settings, in the same process. Baseline and candidate are timed
in alternating rounds (baseline, candidate, baseline, ...) so clock drift and thermal state hit both alike;
each is the median over rounds, and the ratio is the median of the per-round ratios. Each timed round is
forward + backward + AdamW steps on a fixed random batch, CUDA-synchronised at both ends only.

Order of work, so that the targets come first if time runs out: the headline pair (``localvit_tiny`` vs
DeiT-T) eager, then with the fused locality kernels, eager and compiled around them, then compiled, then
every other model of the LocalViT tables, eager, fewer steps.
``--max-seconds`` bounds the whole run: a model still running at the deadline is interrupted, recorded
as an error, and the rest skipped; a failure of one model/mode (e.g. torch.compile) is recorded too.

``--compile-scope blocks`` (default) compiles each transformer block (``block.compile()``): identical
blocks share one compiled graph, so a cold compile costs seconds instead of the ~1 min of a whole-model
compile, at almost the same speed; ``--compile-scope model`` is ``torch.compile(model)`` as the loop does.

GPU (about 70 s on an H100, compile included):

    python benchmarks/train_throughput.py --out results/bench/train_throughput.json

At the proxy's geometry, eager against the CUDA-graph step the proxy recipes use:

    python benchmarks/train_throughput.py --image-size 64 --patch-size 8 --modes eager graphed \\
        --max-rows 0 --out results/bench/train_throughput_proxy.json

CPU smoke test:

    python benchmarks/train_throughput.py --device cpu --batch-size 2 --image-size 64 --max-rows 2 \\
        --modes eager --out /tmp/train_throughput.json
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from bench_common import allow_tf32, before_deadline, environment, synchronize, write_json

import lvit
from lvit.engine.graphed import capture_step
from lvit.engine.loop import training_autocast
from lvit.experiments import list_experiments
from lvit.models.locality import set_fused_locality

Model = tuple[str, dict[str, Any]]
BASELINE: Model = ("deit_tiny_patch16_224", {})
MODES = ("eager", "compiled", "graphed", "compiled-graphed", "fused", "compiled-fused", "graphed-fused",
         "compiled-graphed-fused")
HEADLINE: Model = ("localvit_tiny", {})


def model_key(name: str, kwargs: dict[str, Any]) -> str:
    """One (model, kwargs) as a string, the same after a JSON round trip (which turns tuples into lists)."""
    return f"{name}{sorted((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in kwargs.items())}"


def table_models() -> Iterator[Model]:
    """Distinct (model, kwargs) pairs of the LocalViT classification tables, declaration order."""
    seen: set[str] = set()
    candidates = [HEADLINE]
    for experiment in list_experiments("localvit"):
        if experiment.task == "classification":
            # rows with no model are published-only baselines that lvit does not build
            candidates += [(row.model, dict(row.model_kwargs)) for row in experiment.rows if row.model]
    for name, kwargs in candidates:
        key = model_key(name, kwargs)
        if key not in seen:
            seen.add(key)
            yield name, kwargs



def build_runner(model: Model, args: argparse.Namespace, mode: str) -> Callable[[int], float]:
    """A function ``run(steps) -> images/s`` training ``model`` on one fixed random batch.

    ``mode``: ``eager``; ``compiled`` (``torch.compile``); ``graphed``, the training loop's CUDA-graph step
    (``lvit.engine.graphed``: forward, loss and backward replayed, the optimizer eager); ``compiled-graphed``,
    the compiled model's step captured so (inductor's kernels without its host-side work: the strongest
    DeiT-T, the target's "compiled" without the launch overhead); each with ``-fused``: the locality
    feed-forward's Triton kernels (``set_fused_locality``; DeiT-T, which has none, runs without), as custom
    ops in a compiled graph (``fused`` alone is eager with them).
    """
    device = torch.device(args.device)
    name, kwargs = model
    geometry = {"img_size": args.image_size} | ({"patch_size": args.patch_size} if args.patch_size else {})
    with device:  # initialise on the GPU: CPU init of the larger models would cost seconds each
        net = lvit.create_model(name, **geometry, **kwargs).train()
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        labels = torch.randint(0, 1000, (args.batch_size,))
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    runs_as = baseline_mode(mode)  # eager, compiled or graphed; a fused mode adds the kernels to it
    if runs_as != mode:
        set_fused_locality(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward: nn.Module = net
    compiled = runs_as in ("compiled", "compiled-graphed")
    if compiled and args.compile_scope == "blocks" and hasattr(net, "blocks"):
        for block in net.blocks:
            block.compile()
    elif compiled:
        forward = torch.compile(net)  # type: ignore[assignment]
    loss_fn = nn.CrossEntropyLoss()
    graphed = None
    if runs_as in ("graphed", "compiled-graphed"):  # a compiled model compiles in the capture's warm-up
        # ``forward``: the compiled model where the whole model is compiled (``--compile-scope model``)
        autocast = lambda: training_autocast(device, cache=False)  # noqa: E731
        graphed = capture_step(forward, loss_fn, images, labels, autocast)
        if graphed is None:
            raise RuntimeError("CUDA-graph capture failed (see the warning above)")

    def run(steps: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            if graphed is not None:  # replays overwrite the gradients: no zero_grad
                graphed(images, labels)
            else:
                with training_autocast(device):  # the loop's precision: bf16 on CUDA, fp32 on CPU
                    loss = loss_fn(forward(images), labels)
                loss.backward()
            optimizer.step()
            if graphed is None:
                optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return args.batch_size * steps / (time.perf_counter() - start)

    return run


def compare(
    baseline: Callable[[int], float], candidate: Callable[[int], float], steps: int, rounds: int
) -> dict[str, float]:
    """Alternate timed rounds of the two (both already warm); medians and the median per-round ratio."""
    base, ours = [], []
    for _ in range(rounds):
        base.append(baseline(steps))
        ours.append(candidate(steps))
    base_median = statistics.median(base)
    return dict(
        images_s=statistics.median(ours),
        deit_images_s=base_median,
        ratio=statistics.median(o / b for o, b in zip(ours, base, strict=True)),
        baseline_spread=(max(base) - min(base)) / base_median,
    )


def baseline_mode(mode: str) -> str:
    """The mode DeiT-T actually runs in under ``mode``: it has no locality feed-forward, so a fused mode runs
    it as the mode without the kernels, and one warm baseline serves both (a second compile would only cost
    time)."""
    return "eager" if mode == "fused" else mode.removesuffix("-fused")


class Bench:
    """Runs the comparisons in order within one deadline, keeping one warm baseline per
    :func:`baseline_mode`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.max_seconds
        self.baselines: dict[str, Callable[[int], float]] = {}
        self.rows: list[dict[str, Any]] = []

    def row(self, mode: str, model: Model, steps: int, rounds: int, warmup: int) -> None:
        name, kwargs = model
        row: dict[str, Any] = dict(mode=mode, model=name, kwargs=kwargs, steps=steps, rounds=rounds)
        start = time.monotonic()
        try:
            row.update(before_deadline(self.deadline, self._measure, mode, model, steps, rounds, warmup))
        except Exception as error:  # one model/mode failing must not lose the others' numbers
            row["error"] = f"{type(error).__name__}: {error}"[:500]
            if isinstance(error, torch.OutOfMemoryError | TimeoutError):
                self.baselines.pop(baseline_mode(mode), None)  # may be half-updated; rebuilt if time is left
        row["seconds"] = round(time.monotonic() - start, 2)
        self.rows.append(row)
        gc.collect()
        result = row.get("error") or f"{row['images_s']:.1f} img/s, ratio {row['ratio']:.3f}"
        print(f"{mode:8s} {name} {kwargs or ''}: {result} ({row['seconds']} s)", flush=True)

    def _measure(self, mode: str, model: Model, steps: int, rounds: int, warmup: int) -> dict[str, float]:
        key = baseline_mode(mode)
        if key not in self.baselines:
            baseline = build_runner(BASELINE, self.args, key)
            baseline(warmup)  # a compiled model compiles here
            self.baselines[key] = baseline
        candidate = build_runner(model, self.args, mode)
        candidate(warmup)
        return compare(self.baselines[key], candidate, steps, rounds)


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"### Training throughput vs timm DeiT-T ({env['date'][:10]})",
        "",
        f"device {env['device']}; torch {env['torch']}, timm {env['timm']}, lvit {env['lvit']}; batch "
        f"{args.batch_size}, {args.image_size}x{args.image_size}, patch {args.patch_size or 'own'}, "
        f"{env['precision']}, AdamW; "
        f"channels_last={args.channels_last}; compile scope {args.compile_scope}; interleaved, medians",
        "",
        "| mode | model | kwargs | images/s | DeiT-T images/s | ratio | baseline spread |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        kwargs = r["kwargs"] or ""
        if "error" in r:
            error = r["error"].splitlines()[0][:80]
            lines.append(f"| {r['mode']} | {r['model']} | {kwargs} | {error} | | | |")
        else:
            lines.append(
                f"| {r['mode']} | {r['model']} | {kwargs} | {r['images_s']:.1f} "
                f"| {r['deit_images_s']:.1f} | {r['ratio']:.3f} | {r['baseline_spread']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=["eager", "fused", "compiled-fused", "compiled"],
        help="modes of the headline pair; the other table rows run eager only. graphed: the training "
        "loop's CUDA-graph step (CUDA only), which the proxy recipes use; compiled-graphed: that step of "
        "the compiled model; fused: eager with the locality feed-forward's Triton kernels (a GPU, or "
        "TRITON_INTERPRET=1 on the CPU); X-fused: mode X with them",
    )
    parser.add_argument("--patch-size", type=int, default=None,
                        help="patch size of every model (default: each model's own); the proxy uses "
                             "--image-size 64 --patch-size 8")  # fmt: skip
    parser.add_argument("--compile-scope", choices=("blocks", "model"), default="blocks")
    parser.add_argument("--warmup", type=int, default=3, help="headline steps before timing (compiles)")
    parser.add_argument("--steps", type=int, default=5, help="headline steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="headline timed rounds per model")
    parser.add_argument("--row-steps", type=int, default=2, help="steps per round, other table rows")
    parser.add_argument("--row-rounds", type=int, default=3, help="rounds, other table rows")
    parser.add_argument("--max-rows", type=int, default=None, help="at most this many other table rows")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for CUDA, as the training loop",
    )
    parser.add_argument("--max-seconds", type=float, default=70.0, help="deadline for the whole run")
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    if args.channels_last is None:
        args.channels_last = args.device.startswith("cuda")
    return args


def main() -> None:
    args = parse_args()
    wall = time.monotonic()
    allow_tf32()
    bench = Bench(args)
    for mode in args.modes:
        bench.row(mode, HEADLINE, args.steps, args.rounds, args.warmup)
    others = [model for model in table_models() if model != HEADLINE][: args.max_rows]
    for model in others:
        bench.row("eager", model, args.row_steps, args.row_rounds, warmup=2)
    env = environment(args.device)
    print(markdown(bench.rows, env, args))
    write_json(args.out, "train_throughput", env, args, wall, rows=bench.rows)


if __name__ == "__main__":
    main()
