"""Parameters and MACs with the counting convention of the LocalViT paper's Params/FLOPs columns.

The paper's "FLOPs" are GMACs of one 224x224 image from the official repo's ``flops_counter.py``, a
modified ptflops. :func:`count_macs` reproduces it with forward hooks on module types:

- Conv1d/2d: ``out.numel() * k_h * k_w * in_channels / groups``, plus one add per output element if biased.
- Linear: ``in.numel() * out_features``, plus the bias **once per feature** (``out_features``), not per token.
- BatchNorm: ``2 * in.numel()`` (affine) or ``in.numel()``.
- ReLU/ReLU6/LeakyReLU/ELU/PReLU: ``out.numel()``; h-swish and h-sigmoid count ``out.numel()`` too: the
  repo counter saw the ReLU6 inside them and none of their other arithmetic.
- Pooling (max/avg, adaptive or not): ``in.numel()``.
- Attention (timm ViT, timm TNT, PVT v1): ``2 * N^2 * d`` for ``q @ k^T`` and ``attn @ v`` with N the
  query tokens and d the attention width; its projections (qkv / q+kv / qk+v, proj, PVT's reduction conv)
  are counted by the rules above. Like the repo counter, the matmuls **ignore PVT's spatial reduction**
  (keys/values counted as N, not N / sr^2), hence 4.74 / 4.83 G for PVT-T / LocalViT-PVT (reference
  ``localvit.md`` §2.1) instead of their true ~1.9 / 2.0 G.
- Not counted: LayerNorm, GELU, softmax, sigmoid, residual adds, reshapes, dropout.

Parameters are ``sum(p.numel() for trainable p)``; BN running statistics are buffers and do not count.
This convention gives the paper's 1.2625 / 1.2713 / 1.2801 G for the placement rows (locality in 4 / 8 /
12 blocks) and 1.2537 G for DeiT-T; FLOP counters that count attention matmuls differently do not.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.models.tnt import Attention as TNTAttention
from timm.models.vision_transformer import Attention as ViTAttention

from lvit.models.locality import HSigmoid, HSwish
from lvit.models.pvt import Attention as PVTAttention

__all__ = ["count_macs", "count_params", "complexity_rows", "register_cli"]

Hook = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], int]
ATTENTION_TYPES: tuple[type[nn.Module], ...] = (ViTAttention, TNTAttention, PVTAttention)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.PReLU, HSwish, HSigmoid)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (the papers' "Params")."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _conv_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    per_output = math.prod(module.kernel_size) * module.in_channels // module.groups
    return out.numel() * per_output + (out.numel() if module.bias is not None else 0)


def _linear_macs(module: nn.Linear, tokens: torch.Tensor) -> int:
    return tokens.numel() * module.out_features + (module.out_features if module.bias is not None else 0)


def _attention_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    """``q @ k^T`` and ``attn @ v`` as ``2 * N^2 * d`` with N the *query* tokens; the projections inside
    are counted by their own rules. For PVT this is the paper counter's quirk: keys/values are N / sr^2."""
    tokens = inputs[0]
    num_tokens, sequences = tokens.shape[-2], math.prod(tokens.shape[:-2])
    return 2 * sequences * num_tokens**2 * module.proj.in_features


def _hook_for(module: nn.Module) -> Hook | None:
    if isinstance(module, ATTENTION_TYPES):
        return _attention_macs
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return _conv_macs
    if isinstance(module, nn.Linear):
        return lambda m, inputs, out: _linear_macs(m, inputs[0])
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        return lambda m, inputs, out: inputs[0].numel() * (2 if m.affine else 1)
    if isinstance(module, _ACTIVATIONS):
        return lambda m, inputs, out: out.numel()
    if isinstance(module, _POOLS):
        return lambda m, inputs, out: inputs[0].numel()
    return None


def _counted_modules(model: nn.Module) -> Iterator[tuple[nn.Module, Hook]]:
    for module in model.modules():
        hook = _hook_for(module)
        if hook is not None:
            yield module, hook


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass of a single image of ``input_size`` (C, H, W), by the
    paper's convention (module docstring). The model is run in eval mode and restored afterwards."""
    return sum(count_macs_by_part(model, input_size).values())


@torch.no_grad()
def count_macs_by_part(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224),
                       parts: Mapping[str, Iterable[nn.Module]] | None = None) -> dict[str, int]:
    """:func:`count_macs` split by ``parts`` (name -> modules, each counted with everything inside it; by
    default the model's top-level children, e.g. DPT's backbone, reassemble, fusion and head), in the order
    they first count; MACs of counted modules outside every part under ``""``."""
    if parts is None:
        parts = {name: [child] for name, child in model.named_children()}
    part_of = {id(m): name for name, roots in parts.items() for root in roots for m in root.modules()}
    counts: dict[str, int] = {}

    def record(module: nn.Module, hook: Hook, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        part = part_of.get(id(module), "")
        counts[part] = counts.get(part, 0) + hook(module, inputs, out)

    handles = [module.register_forward_hook(lambda mod, i, o, hook=hook: record(mod, hook, i, o))
               for module, hook in _counted_modules(model)]
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counts


# --- `lvit complexity` ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComplexityRow:
    experiment: str
    row: str
    model: str
    params_m: float
    flops_g: float
    published_params_m: float | None
    published_flops_g: float | None
    params_digits: int | None = None  # digits the paper printed, where the transcription lost a trailing 0
    flops_digits: int | None = None

    @property
    def params_match(self) -> bool | None:
        return matches_printed(self.params_m, self.published_params_m, self.params_digits)

    @property
    def flops_match(self) -> bool | None:
        return matches_printed(self.flops_g, self.published_flops_g, self.flops_digits)


def printed_decimals(value: float) -> int:
    """Digits after the point of a published figure as transcribed (5.78 -> 2, 1.3 -> 1)."""
    text = repr(float(value))
    return 0 if text.endswith(".0") and "e" not in text else len(text.split(".")[1])


def matches_printed(ours: float, published: float | None, digits: int | None = None) -> bool | None:
    """Our value rounded to the digits the paper printed equals the printed value (None if unpublished).

    ``digits`` defaults to the transcribed float's; pass it where the paper printed a trailing zero
    ("1.40") that the float lost (:data:`lvit.experiments.localvit.PRINTED_DIGITS`)."""
    if published is None:
        return None
    digits = max(printed_decimals(published), digits or 0)
    return round(ours, digits) == round(published, digits)


def complexity_rows(experiments: list[str] | None = None, progress: bool = False) -> list[ComplexityRow]:
    """Our Params (M) / FLOPs (G) for every row with a published Params or FLOPs figure (default: all
    LocalViT experiments; the curves figures print neither and are skipped)."""
    from tqdm import tqdm

    import lvit
    from lvit.experiments import get_experiment, list_experiments
    from lvit.experiments.localvit import PRINTED_DIGITS

    chosen = [get_experiment(n) for n in experiments] if experiments else list_experiments("localvit")
    todo = [(e, r) for e in chosen for r in e.rows if {"params_m", "flops_g"} & set(r.published)]
    cache: dict[tuple[str, tuple], tuple[int, int]] = {}
    rows = []
    for experiment, row in tqdm(todo, desc="complexity", disable=not progress, file=sys.stderr):
        key = (row.model, tuple(sorted((k, repr(v)) for k, v in row.model_kwargs.items())))
        if key not in cache:
            model = lvit.create_model(row.model, **row.model_kwargs)
            cache[key] = (count_params(model), count_macs(model))
        params, macs = cache[key]
        digits = {m: PRINTED_DIGITS.get((experiment.name, row.label, m)) for m in ("params_m", "flops_g")}
        rows.append(ComplexityRow(experiment.name, row.label, row.model, params / 1e6, macs / 1e9,
                                  row.published.get("params_m"), row.published.get("flops_g"),
                                  digits["params_m"], digits["flops_g"]))
    return rows


def _fmt(value: float | None, digits: int | None = None) -> str:
    """Ours at fixed digits; published (``digits=None``) as transcribed."""
    if value is None:
        return ""
    return str(value) if digits is None else f"{value:.{digits}f}"


def _fmt_published(value: float | None, printed_digits: int | None) -> str:
    return _fmt(value, printed_digits if value is not None and printed_digits else None)


def _mark(match: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[match]


def _table(rows: list[ComplexityRow]) -> list[list[str]]:
    header = ["experiment", "row", "model", "params_m", "published", "match", "flops_g", "published", "match"]
    body = [[r.experiment, r.row, r.model,
             _fmt(r.params_m, 3), _fmt_published(r.published_params_m, r.params_digits),
             _mark(r.params_match),
             _fmt(r.flops_g, 4), _fmt_published(r.published_flops_g, r.flops_digits), _mark(r.flops_match)]
            for r in rows]
    return [header, *body]


def _run(args: argparse.Namespace) -> int:
    # Batch-1 forwards are too small to gain from threads; on a busy machine extra threads only spin.
    torch.set_num_threads(1)
    try:
        rows = complexity_rows(args.experiment or None, progress=True)
    except KeyError as error:  # a mistyped experiment: the message names the valid ones
        raise SystemExit(f"lvit complexity: {error.args[0]}") from None
    table = _table(rows)
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["experiment", "row", "model", "params_m", "published_params_m", "params_match",
                         "flops_g", "published_flops_g", "flops_match"])
        for r in rows:
            writer.writerow([r.experiment, r.row, r.model, f"{r.params_m:.6f}", r.published_params_m,
                             r.params_match, f"{r.flops_g:.6f}", r.published_flops_g, r.flops_match])
    else:
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for i, line in enumerate(table):
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
    mismatches = sum(r.params_match is False or r.flops_match is False for r in rows)
    print(f"{len(rows)} rows, {mismatches} mismatching a published figure", file=sys.stderr)
    return 1 if mismatches else 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "complexity", help="Params (M) and FLOPs (GMACs, 224x224) of every LocalViT table row vs the papers",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=("table", "csv"), default="table")
    parser.add_argument("--experiment", action="append", metavar="NAME",
                        help="only this experiment (repeatable); default: every LocalViT experiment")
    parser.set_defaults(func=_run)
