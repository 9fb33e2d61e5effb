"""How many bytes one eager training step moves: ``localvit_tiny`` beside timm's DeiT-T, operator by operator.

Small ViTs train far below a GPU's arithmetic peak: DeiT-T at batch 256 on an H200 (10.9k images/s, about
3.8 GFLOP each for forward and backward) runs at about 4 % of the bf16 peak, so its step time follows the
memory its operators read and write more than their FLOPs. A dispatch mode sees every aten operator of the
forward, the backward (after autograd, so each backward kernel counts) and the AdamW step, and adds up the
bytes of the tensors each operator reads and writes. Views move nothing and are not counted; a tensor
counts the bytes its elements span, at most its storage (an expanded tensor is read once).

``DeiT-T bytes / LocalViT-T bytes`` would be the throughput ratio of an eager step bound by memory
bandwidth alone. A real step is partly bound by other things, so ``--rows --measured JSON`` checks the count
against a GPU: for every model of the LocalViT tables it prints the bytes beside the eager ratio a
``train_throughput.py`` run measured, and the measured time each extra MB costs (``RESULTS.md``: 0.19-0.24 %
of DeiT-T's step per MB per image on an H200). A fused kernel moves less than the operators it replaces, so
the count is also the budget for fusion. ``--fused`` counts LocalViT-T with lvit's fused locality kernels
(``set_fused_locality``), each Triton launch as the bytes of the tensors it is passed. ``--dpt`` counts one
eval forward of lvit's and HuggingFace's DPT, and of lvit's with ``set_low_precision_norms``.

The count is per operator, not per kernel, and the same on every device for the same operator graph: it
runs on the CPU. On CUDA, cuDNN's batch norm and convolution take the place of the CPU ones and read and
write the same tensors; autocast's casts are counted where autocast inserts them (``--bf16``: CPU autocast,
whose cast list differs from CUDA's in places; for ``group_norm``, which CPU autocast runs in bf16 and CUDA's
in fp32, ``--dpt --bf16`` follows CUDA's, see :func:`cuda_autocast_group_norm`).

    python benchmarks/step_traffic.py --out results/bench/step_traffic.json            # 20 s on 2 cores
    python benchmarks/step_traffic.py --bf16                                             # 3 min
    python benchmarks/step_traffic.py --fused                                            # 25 s
    python benchmarks/step_traffic.py --rows --measured benchmarks/gpu/train_throughput.json   # 4 min
    HF_HUB_OFFLINE=1 python benchmarks/step_traffic.py --dpt --image-size 384 --batch-size 1          # 90 s
    HF_HUB_OFFLINE=1 python benchmarks/step_traffic.py --dpt --bf16 --image-size 384 --batch-size 1   # 33 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_common import environment, write_json
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import lvit
from lvit.models.dpt import set_low_precision_norms
from lvit.models.locality import fused_kernels, set_fused_locality

PHASES = ("forward", "backward", "optimizer")
ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes an operator touches reading or writing ``tensor``: its elements, at most its storage."""
    return min(tensor.numel() * tensor.element_size(), tensor.untyped_storage().nbytes())


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


# the counts run on the CPU: a custom op's own kernel is its CPU one
CPU_KERNEL = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


class TrafficCounter(TorchDispatchMode):
    """Bytes read + written, and calls, per (phase, operator) of every aten operator that moves data: one that
    writes its input in place, or whose outputs are not all storage of its inputs (which leaves out views,
    dropout in eval mode and a cast to the dtype a tensor already has).

    Whether an operator moves data is read off its outputs, not its schema: under ``inference_mode`` the mode
    sees ``to``, ``reshape`` and ``contiguous`` themselves, whose schemas say "may alias the input" although
    a cast or a layout change copies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase = PHASES[0]
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)  # each at least one kernel on a GPU

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func.namespace == "lvit":  # the fused locality path's custom ops: count what runs inside them
            with self:
                return func.redispatch(CPU_KERNEL, *args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        storages = {t.untyped_storage().data_ptr() for t in inputs}
        aliases_input = all(t.untyped_storage().data_ptr() in storages for t in outputs)
        writes_in_place = func._schema.is_mutable and not func.is_view
        allocates = func.overloadpacket.__name__ in ALLOCATIONS  # reserves memory, moves none
        if (writes_in_place or not aliases_input) and not allocates:
            self.bytes[(self.phase, func.overloadpacket.__name__)] += sum(map(tensor_bytes, inputs + outputs))
            self.calls[(self.phase, func.overloadpacket.__name__)] += 1
        return out


class TritonKernelCounter:
    """Stands in for the Triton kernels of the fused locality path (``set_fused_locality``), which a dispatch
    mode cannot see: a launch adds the bytes of every tensor it is passed to ``counter`` (each kernel reads or
    writes each of its tensors once by design; neighbour reads hit the cache) and computes nothing, so the
    count runs on a CPU without Triton's slow interpreter. Counts only while ``active``; ``launches`` keeps
    each counted launch as a ``KernelLaunch`` (``kernel_issue.py`` compiles them as launched)."""

    def __init__(self, counter: TrafficCounter) -> None:
        self.counter = counter
        self.active = False
        self.saved: dict[str, tuple[Any, Any]] = {}  # name: (module, kernel)
        self.launches: list[KernelLaunch] = []

    def __enter__(self) -> TritonKernelCounter:
        self.saved = fused_kernels()
        for name, (module, _) in self.saved.items():
            setattr(module, name, _KernelStandIn(name, self))
        self.saved_interpret = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"  # the feed-forward takes the fused path on CPU only with it
        return self

    def __exit__(self, *exc: object) -> None:
        for name, (module, kernel) in self.saved.items():
            setattr(module, name, kernel)
        if self.saved_interpret is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = self.saved_interpret


class KernelLaunch(NamedTuple):
    name: str
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    meta: dict[str, Any]  # constexprs and launch options (num_warps)
    nbytes: int  # of the tensors it is passed


class _KernelStandIn:
    def __init__(self, name: str, owner: TritonKernelCounter) -> None:
        self.name, self.owner = name, owner

    def __getitem__(self, grid: Any) -> Any:
        def launch(*args: Any, **meta: Any) -> None:
            if self.owner.active:
                nbytes = sum(tensor_bytes(a) for a in args if isinstance(a, torch.Tensor))
                key = (self.owner.counter.phase, f"triton:{self.name}")
                self.owner.counter.bytes[key] += nbytes
                self.owner.counter.calls[key] += 1
                self.owner.launches.append(KernelLaunch(self.name, tuple(grid), args, meta, nbytes))

        return launch


def step_traffic(name: str, args: argparse.Namespace, fused: bool = False, **kwargs: Any
                 ) -> dict[tuple[str, str], int]:
    """Bytes per (phase, operator) of one training step of ``name`` (built with ``kwargs``): see
    :func:`count_step`."""
    return dict(count_step(name, args, fused, **kwargs).bytes)


def count_step(name: str, args: argparse.Namespace, fused: bool = False, **kwargs: Any) -> TrafficCounter:
    """The count of one training step of ``name`` (built with ``kwargs``) on a fixed random batch, counted
    after a warm-up step, from which on AdamW's state exists as in every later step. ``fused``: with the
    locality feed-forward's Triton kernels, counted by :class:`TritonKernelCounter`."""
    torch.manual_seed(0)
    model = lvit.create_model(name, img_size=args.image_size, **kwargs).train()
    model = model.to(memory_format=torch.channels_last)
    if fused:
        set_fused_locality(model)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch_size,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    counter = TrafficCounter()
    kernels = TritonKernelCounter(counter)
    for counting in (contextlib.nullcontext(), counter):
        kernels.active = counting is counter
        with counting, kernels if fused else contextlib.nullcontext():
            counter.phase = "forward"
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = loss_fn(model(images), labels)
            counter.phase = "backward"
            loss.backward()
            counter.phase = "optimizer"
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return counter


@contextlib.contextmanager
def cuda_autocast_group_norm() -> Iterator[None]:
    """Under CPU autocast, run ``group_norm`` in fp32 as CUDA's autocast does (CPU's runs it in the input's
    bf16), so that a count of a GroupNorm model matches the GPU's operator graph; unchanged outside autocast.
    Patches ``torch.nn.functional.group_norm``, which timm and transformers look up at each call."""
    native = F.group_norm

    def fp32_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                        bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
        if not torch.is_autocast_enabled("cpu"):
            return native(x, num_groups, weight, bias, eps)
        with torch.autocast("cpu", enabled=False):
            as_fp32 = [None if t is None else t.float() for t in (weight, bias)]
            return native(x.float(), num_groups, *as_fp32, eps)

    F.group_norm = fp32_group_norm
    try:
        yield
    finally:
        F.group_norm = native


DPT_BATCH = 32  # the batch of the DPT throughput target


def dpt_inference_traffic(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """``--dpt``: MB per image per operator of one eval forward at batch ``DPT_BATCH`` of lvit's and
    HuggingFace's DPT at ``--image-size`` (random weights: the bytes do not depend on the values), per model
    and implementation; lvit also with ``set_low_precision_norms``. ``--bf16``: under autocast, with CUDA's
    fp32 ``group_norm``.

    A forward's bytes are a part per image plus a part per forward (autocast's casts of the weights, the
    Hybrid's weight standardisation), which dominates at small batches. Counting at ``--batch-size`` and at
    twice it separates the two exactly (the operator graph is the same), so the count at ``DPT_BATCH`` needs
    no forward that large.
    """
    from dpt_vs_hf import HFDepth, hf_config  # transformers: the bench extra

    small, large = args.batch_size, 2 * args.batch_size
    operators: dict[str, dict[str, dict[str, float]]] = {}
    for name in ("dpt_hybrid", "dpt_large"):
        torch.manual_seed(0)
        ours = lvit.create_model(name, task="depth", readout="project").eval()
        models = {"hf": HFDepth(hf_config(name, args.image_size)).eval(), "lvit": ours,
                  "lvit_low_precision_norms": ours}
        for implementation, model in models.items():
            set_low_precision_norms(ours, implementation == "lvit_low_precision_norms")
            at_small, at_large = (forward_mb(model, b, args.image_size, args.bf16) for b in (small, large))
            operators.setdefault(name, {})[implementation] = per_image_at(DPT_BATCH, small, at_small,
                                                                          at_large)
    return operators


def per_image_at(batch: int, small: int, at_small: dict[str, float], at_large: dict[str, float]
                 ) -> dict[str, float]:
    """Per operator, the MB per image of a forward of ``batch``, from forwards of ``small`` and ``2 * small``
    images: each operator's bytes are a part per image plus a part per forward."""
    per_image = {op: (at_large.get(op, 0.0) - at_small.get(op, 0.0)) / small for op in at_large}
    return {op: per_image[op] + (at_small.get(op, 0.0) - small * per_image[op]) / batch for op in at_large}


def forward_mb(model: nn.Module, batch: int, image_size: int, bf16: bool) -> dict[str, float]:
    """MB per operator of one eval forward of ``batch`` random images (``bf16``: under autocast, with
    CUDA's fp32 ``group_norm``)."""
    images = torch.randn(batch, 3, image_size, image_size)
    counter = TrafficCounter()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode(), cuda_autocast_group_norm(), counter, autocast:
        model(images)
    return {op: nbytes / 1e6 for (_, op), nbytes in counter.bytes.items()}


def dpt_totals(operators: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """MB per image per model and implementation: the sum over operators."""
    return {name: {impl: sum(ops.values()) for impl, ops in by_impl.items()}
            for name, by_impl in operators.items()}


def dpt_markdown(operators: dict[str, dict[str, dict[str, float]]], top: int) -> str:
    """Totals per model, then each model's ``top`` operators by lvit's MB per image."""
    lines = [f"MB per image at batch {DPT_BATCH}:", "",
             "| model | HF | lvit | HF / lvit | lvit, low-precision norms | HF / that |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, mb in dpt_totals(operators).items():
        hf, ours, low = mb["hf"], mb["lvit"], mb["lvit_low_precision_norms"]
        lines.append(f"| {name} | {hf:.0f} | {ours:.0f} | {hf / ours:.3f} | {low:.0f} | {hf / low:.3f} |")
    for name, by_impl in operators.items():
        ops = sorted(set().union(*by_impl.values()), key=lambda op: -by_impl["lvit"].get(op, 0.0))[:top]
        lines += ["", f"{name}, MB per image at batch {DPT_BATCH} by operator (top {top}):", "",
                  "| operator | HF | lvit | lvit, low-precision norms |", "|---|---:|---:|---:|"]
        lines += [f"| {op} | " + " | ".join(f"{by_impl[impl].get(op, 0.0):.1f}" for impl in by_impl) + " |"
                  for op in ops]
    return "\n".join(lines) + "\n"


def table_row_ratios(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--rows``: the byte ratio (DeiT-T / model, forward + backward) of every model of the LocalViT
    tables, beside the eager throughput ratio measured for it in ``--measured`` (a ``train_throughput.py``
    JSON), so that the count can be checked against a GPU row by row."""
    from train_throughput import BASELINE, model_key, table_models

    measured = {}
    if args.measured:
        for row in json.loads(Path(args.measured).read_text())["rows"]:
            if row["mode"] == "eager" and "ratio" in row and row["ratio"] > 0:
                measured[model_key(row["model"], row["kwargs"])] = row["ratio"]

    def training_mb(name: str, kwargs: dict[str, Any]) -> float:
        mb = per_image_mb(step_traffic(name, args, **kwargs), args.batch_size)
        return mb["forward"] + mb["backward"]

    baseline = training_mb(*BASELINE)
    rows = []
    for name, kwargs in table_models():
        mb = training_mb(name, kwargs)
        ratio = measured.get(model_key(name, kwargs))
        # the measured step time beyond DeiT-T's, per extra MB per image, in % of DeiT-T's step: a purely
        # bandwidth-bound step would pay 100 / baseline for each
        cost = 100 * (1 / ratio - 1) / (mb - baseline) if ratio and mb - baseline > 1 else None
        rows.append(dict(model=name, kwargs=kwargs, mb_per_image=mb, byte_ratio=baseline / mb,
                         measured_eager_ratio=ratio, percent_per_extra_mb=cost))
        print(f"{name} {kwargs or ''}: {mb:.1f} MB per image, byte ratio {baseline / mb:.3f}", flush=True)
    return rows


def per_image_mb(traffic: dict[tuple[str, str], int], batch_size: int) -> dict[str, float]:
    """MB per image moved in each phase, and in the whole step."""
    totals = {phase: 0.0 for phase in PHASES}
    for (phase, _), nbytes in traffic.items():
        totals[phase] += nbytes / 1e6 / batch_size
    return totals | {"step": sum(totals.values())}


def operator_rows(ours: dict[tuple[str, str], int], baseline: dict[tuple[str, str], int],
                  batch_size: int) -> list[dict[str, Any]]:
    """MB per image per (phase, operator) in each model, most extra traffic in LocalViT-T first."""
    rows = [dict(phase=phase, op=op, ours_mb=ours.get((phase, op), 0) / 1e6 / batch_size,
                 deit_mb=baseline.get((phase, op), 0) / 1e6 / batch_size) for phase, op in ours | baseline]
    for row in rows:
        row["extra_mb"] = row["ours_mb"] - row["deit_mb"]
    return sorted(rows, key=lambda row: -row["extra_mb"])


def markdown(totals: dict[str, dict[str, float]], launches: dict[str, int], rows: list[dict[str, Any]],
             env: dict[str, Any], args: argparse.Namespace) -> str:
    ours, deit = totals["localvit_tiny"], totals["deit_tiny_patch16_224"]
    lines = [
        f"### Memory traffic of one eager training step ({env['date'][:10]})",
        "",
        f"`step_traffic.py`: {args.image_size}x{args.image_size}, batch {args.batch_size}, channels_last, "
        f"{'bf16 CPU autocast' if args.bf16 else 'fp32'}, AdamW (foreach)"
        f"{'; LocalViT-T with the fused Triton locality kernels' if args.fused else ''}; "
        f"torch {env['torch']}, timm {env['timm']}, lvit {env['lvit']}; MB read + written per image, "
        "views not counted",
        "",
        "| phase | DeiT-T | LocalViT-T | DeiT-T / LocalViT-T |",
        "|---|---:|---:|---:|",
        *[f"| {phase} | {deit[phase]:.1f} | {ours[phase]:.1f} | {deit[phase] / ours[phase]:.3f} |"
          for phase in (*PHASES, "step")],
        "",
        "Operators that move data, and Triton launches, per step: "
        f"DeiT-T {launches['deit_tiny_patch16_224']}, LocalViT-T {launches['localvit_tiny']}. On a GPU each "
        "is a kernel launch or more, and a small one costs a few µs even inside a CUDA graph.",
        "",
        f"Operators with the most extra traffic in LocalViT-T (top {args.top}):",
        "",
        "| phase | operator | DeiT-T MB | LocalViT-T MB | extra MB |",
        "|---|---|---:|---:|---:|",
        *[f"| {r['phase']} | {r['op']} | {r['deit_mb']:.1f} | {r['ours_mb']:.1f} | {r['extra_mb']:+.1f} |"
          for r in rows[: args.top]],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32, help="bytes per image barely depend on it")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--bf16", action="store_true",
                        help="CPU bf16 autocast instead of fp32 (with --dpt: group_norm in fp32, as on CUDA)")
    parser.add_argument("--top", type=int, default=15, help="operator rows to print")
    parser.add_argument("--rows", action="store_true",
                        help="instead: the byte ratio of every model of the LocalViT tables (minutes)")
    parser.add_argument("--measured", metavar="JSON",
                        help="with --rows: a train_throughput.py JSON whose eager ratios to print beside")
    parser.add_argument("--dpt", action="store_true",
                        help="instead: one eval forward of dpt_hybrid and dpt_large, lvit vs HuggingFace, "
                             f"per image at batch {DPT_BATCH} from counts at --batch-size and twice it "
                             "(use --image-size 384 --batch-size 1; needs transformers)")
    parser.add_argument("--fused", action="store_true",
                        help="LocalViT-T with the locality feed-forward's Triton kernels "
                             "(set_fused_locality), each launch counted as the bytes of the tensors it is "
                             "passed")
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    wall = time.monotonic()
    # the code state and date at the start, before anything can change them
    env = environment("cpu", precision="bf16 CPU autocast" if args.bf16 else "fp32")
    if args.rows:
        rows = table_row_ratios(args)
        print("| model | kwargs | MB per image (fwd + bwd) | DeiT-T / model, bytes | measured eager ratio "
              "| measured % of DeiT-T step per extra MB |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            measured = f"{r['measured_eager_ratio']:.3f}" if r["measured_eager_ratio"] else "–"
            cost = f"{r['percent_per_extra_mb']:.3f}" if r["percent_per_extra_mb"] else "–"
            print(f"| {r['model']} | {r['kwargs'] or ''} | {r['mb_per_image']:.1f} | {r['byte_ratio']:.3f} "
                  f"| {measured} | {cost} |")
        write_json(args.out, "step_traffic_rows", env, args, wall, rows=rows)
        return
    if args.dpt:
        operators = dpt_inference_traffic(args)
        print(dpt_markdown(operators, args.top))
        write_json(args.out, "step_traffic_dpt", env, args, wall, mb_per_image=dpt_totals(operators),
                   operators_mb_per_image=operators)
        return
    models = ("deit_tiny_patch16_224", "localvit_tiny")
    counts = {name: count_step(name, args, fused=args.fused and name == models[1]) for name in models}
    totals = {name: per_image_mb(counts[name].bytes, args.batch_size) for name in models}
    launches = {name: sum(counts[name].calls.values()) for name in models}
    rows = operator_rows(counts[models[1]].bytes, counts[models[0]].bytes, args.batch_size)
    print(markdown(totals, launches, rows, env, args))
    write_json(args.out, "step_traffic", env, args, wall, totals_mb_per_image=totals,
               launches_per_step=launches, operators=rows)


if __name__ == "__main__":
    main()
