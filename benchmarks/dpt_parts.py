"""Where DPT's inference time goes, part by part: lvit beside HuggingFace ``transformers``, same batch.

``dpt_vs_hf.py`` measured lvit's ``dpt_hybrid`` at 1.03x HF at batch 32 on an H200 (target 1.8x). At that
speed it runs its 255 GFLOP per 384² image at about 19 % of the GPU's bf16 matrix rate and moves its counted
bytes at under a third of the memory bandwidth; neither channels_last nor bf16 norms changed it by more
than 5 %. So which part holds it back was inferred, never measured (``RESULTS.md``). This measures it.

One eager forward of each model (bf16 autocast on a GPU, fp32 on the CPU) records every call of the modules
that make up each part, with its arguments. Each part is then timed alone by replaying its calls in the same
order (synchronised before and after; median over rounds that alternate the two models). The parts:

* ``embedding``: lvit's ResNet stem, stages and norm (Hybrid only) and patch projection; HF's embeddings
  (the same, plus the class token and position embedding);
* ``transformer``: the ViT blocks up to the last tap (all of them); HF's encoder;
* ``reassemble``: the reassemble operations and the 3x3 convs that bring each tap to the decoder's width;
* ``fusion``: the four fusion blocks; ``head``: the depth head.

What lies outside every part (token reshapes, the class token, a tap's selection) shows as the whole
forward minus the sum of the parts. lvit's rows also give the part's GMACs per image
(``lvit.complexity.count_macs_by_part``) and the rate it runs them at. A replayed part's output is checked
against the recorded one before timing. The Hybrid pair has each model's own random weights, as in
``dpt_vs_hf.py``; timing does not depend on the values.

GPU (about 40 s for both models):

    HF_HUB_OFFLINE=1 python benchmarks/dpt_parts.py --out results/bench/dpt_parts.json

CPU plumbing check (CPU times say nothing about a GPU):

    HF_HUB_OFFLINE=1 python benchmarks/dpt_parts.py --device cpu --models dpt_hybrid --size 64 \\
        --batch-size 2 --rounds 1
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from bench_common import allow_tf32, before_deadline, environment, write_json

from lvit.complexity import count_macs_by_part
from lvit.models.dpt import DPT

if TYPE_CHECKING:
    from dpt_vs_hf import HFDepth

PARTS = ("embedding", "transformer", "reassemble", "fusion", "head")


def lvit_parts(model: DPT) -> dict[str, list[nn.Module]]:
    vit = model.backbone
    stem: list[nn.Module] = []
    if model.conv_taps:
        resnet = vit.patch_embed.backbone
        stem = [resnet.stem, *resnet.stages, resnet.norm]
    return dict(
        embedding=[*stem, vit.patch_embed.proj],
        transformer=list(vit.blocks),
        reassemble=[*model.reassemble, *model.feature_convs],
        fusion=list(model.fusion),
        head=[model.head],
    )


def hf_parts(model: HFDepth) -> dict[str, list[nn.Module]]:
    dpt, neck = model.model.dpt, model.model.neck
    return dict(
        embedding=[dpt.embeddings],
        transformer=[dpt.encoder],
        reassemble=[neck.reassemble_stage, *neck.convs],
        fusion=[neck.fusion_stage],
        head=[model.model.head],
    )


@dataclass
class Call:
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[torch.Tensor] = field(default_factory=list)  # taken at the call: callers may mutate lists


@dataclass
class Recording:
    """Every call of each part's modules in one forward, in call order, with arguments and outputs."""

    calls: dict[str, list[Call]] = field(default_factory=dict)

    def replay(self, part: str) -> list[Any]:
        return [call.module(*call.args, **call.kwargs) for call in self.calls[part]]


def record_calls(model: nn.Module, parts: Mapping[str, Iterable[nn.Module]], x: torch.Tensor) -> Recording:
    """Run ``model(x)`` once, recording the calls of the parts' modules. A listed module that runs inside
    another listed one is an error: replaying both would run it twice."""
    recording = Recording({name: [] for name in parts})
    running: list[Call] = []
    handles = []

    def before(part: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if running:
            raise ValueError(f"{type(module).__name__} runs inside {type(running[-1].module).__name__}, "
                             "and both are listed in the parts")
        running.append(Call(module, args, dict(kwargs)))
        recording.calls[part].append(running[-1])

    def after(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        running.pop().outputs = _tensors(output)

    for name, modules in parts.items():
        for module in modules:
            handles.append(module.register_forward_pre_hook(
                lambda m, a, k, name=name: before(name, m, a, k), with_kwargs=True))
            handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return recording


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a module's output (a tensor, a tuple or list, or a HF output object)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def replay_max_abs_diff(recording: Recording, part: str) -> float:
    """The largest difference between the replayed part's outputs and those recorded in the forward."""
    diffs = [
        (new.float() - old.float()).abs().max().item()
        for call, output in zip(recording.calls[part], recording.replay(part), strict=True)
        for new, old in zip(_tensors(output), call.outputs, strict=True)
    ]
    return max(diffs, default=0.0)


def profile_pair(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Per-part medians (ms per batch) of lvit and HF, the whole forwards, lvit's GMACs per part, and the
    replay checks."""
    from dpt_vs_hf import build_pair, inference_autocast, interleaved  # needs transformers; the parts don't

    device = torch.device(args.device)
    hf, ours, _ = build_pair(name, args)
    parts = dict(lvit=lvit_parts(ours), hf=hf_parts(hf))
    macs = count_macs_by_part(ours, (3, args.size, args.size), parts=parts["lvit"])
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    models = dict(lvit=ours, hf=hf)
    with torch.inference_mode(), inference_autocast(device):
        recordings = {key: record_calls(model, parts[key], x) for key, model in models.items()}
        replay_diff = {f"{key}/{part}": replay_max_abs_diff(recordings[key], part)
                       for key in models for part in PARTS}
    work = {f"{key}/whole": model for key, model in models.items()}
    work |= {f"{key}/{part}": lambda _, recording=recordings[key], part=part: recording.replay(part)
             for key in models for part in PARTS}
    ms = {key: 1e3 * median for key, median in interleaved(work, x, args.warmup, args.rounds).items()}
    return dict(ms_per_batch=ms, lvit_gmacs_per_image={p: macs.get(p, 0) / 1e9 for p in PARTS},
                lvit_gmacs_outside_parts=macs.get("", 0) / 1e9, replay_max_abs_diff=replay_diff)


def rows(result: dict[str, Any], batch_size: int) -> list[dict[str, Any]]:
    """One row per part, then the parts' sum, what lies outside them and the whole forward."""
    ms, gmacs = result["ms_per_batch"], result["lvit_gmacs_per_image"]
    table = [dict(part=p, lvit_ms=ms[f"lvit/{p}"], hf_ms=ms[f"hf/{p}"], gmacs=gmacs[p]) for p in PARTS]
    summed = dict(part="sum of parts", lvit_ms=sum(r["lvit_ms"] for r in table),
                  hf_ms=sum(r["hf_ms"] for r in table), gmacs=sum(gmacs.values()))
    whole = dict(part="whole forward", lvit_ms=ms["lvit/whole"], hf_ms=ms["hf/whole"],
                 gmacs=summed["gmacs"] + result["lvit_gmacs_outside_parts"])
    outside = dict(part="outside the parts", lvit_ms=whole["lvit_ms"] - summed["lvit_ms"],
                   hf_ms=whole["hf_ms"] - summed["hf_ms"], gmacs=result["lvit_gmacs_outside_parts"])
    for row in [*table, summed, outside, whole]:
        row["ratio"] = row["hf_ms"] / row["lvit_ms"] if row["lvit_ms"] > 0 else float("nan")
        row["share"] = row["lvit_ms"] / whole["lvit_ms"]
        # GMACs per image x 2 FLOP x images / seconds
        row["lvit_tflop_s"] = 2 * row["gmacs"] * batch_size / row["lvit_ms"] if row["lvit_ms"] > 0 else None
    return [*table, summed, outside, whole]


def markdown(results: dict[str, dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"### DPT inference by part, lvit vs HuggingFace ({env['date'][:10]})",
        "",
        f"device {env['device']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"lvit {env['lvit']}; "
        f"batch {args.batch_size}, {args.size}x{args.size}, {env['precision']}, eager; each part replayed "
        f"alone, medians of {args.rounds} alternating rounds",
    ]
    for name, result in results.items():
        lines += ["", f"**{name}**", ""]
        if "error" in result:
            lines.append(f"failed: {result['error'].splitlines()[0]}")
            continue
        lines += ["| part | lvit ms | HF ms | HF / lvit | lvit share | lvit GMACs/img | lvit TFLOP/s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows(result, args.batch_size):
            rate = "" if r["lvit_tflop_s"] is None else f"{r['lvit_tflop_s']:.3g}"
            lines.append(f"| {r['part']} | {r['lvit_ms']:.2f} | {r['hf_ms']:.2f} | {r['ratio']:.2f} "
                         f"| {r['share']:.0%} | {r['gmacs']:.1f} | {rate} |")
        worst = max(result["replay_max_abs_diff"].items(), key=lambda item: item[1])
        lines.append(f"\nReplay check: largest difference from the recorded outputs {worst[1]:.2e} "
                     f"({worst[0]}).")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=("dpt_hybrid", "dpt_large"),
                        default=["dpt_hybrid", "dpt_large"])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="deadline for the whole run")
    parser.add_argument("--out", help="write the results as JSON to this path")
    return parser.parse_args()


def main() -> None:
    import transformers

    args = parse_args()
    started = time.monotonic()
    env = environment(args.device, transformers=transformers.__version__)
    allow_tf32()
    deadline = started + args.max_seconds
    results: dict[str, dict[str, Any]] = {}
    for name in args.models:
        try:
            results[name] = before_deadline(deadline, profile_pair, name, args)
        except Exception as error:  # one model failing must not lose the other's numbers
            results[name] = dict(error=f"{type(error).__name__}: {error}"[:500])
        print(f"{name}: {results[name].get('error', 'ok')}", flush=True)
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(markdown(results, env, args))
    write_json(args.out, "dpt_parts", env, args, started, results=results)


if __name__ == "__main__":
    main()
