"""Can plain DeiT-T at the proxy's geometry learn a cue that needs token positions, in a few hundred steps?

The proxy's plain ViTs stay at chance on LocalShapes (``benchmarks/RESULTS.md``). This probe separates "does
not train" from "does not use position": a 16x16 bright square on noise, at 64x64 with 8x8 patches, and two
labels. ``presence``: is the square there (any token can tell; no position needed). ``side``: is it in the
left or the right half (the same tokens, told apart only through the position embedding). ``--pos-embed-std``
re-draws the position embedding at another scale than timm's 0.02, to test whether its small scale at
initialisation is what holds ``side`` back.

    python benchmarks/position_probe.py --cue presence side --depth 4 12 --pos-embed-std 0.02 0.5 --steps 120
"""

from __future__ import annotations

import argparse
import itertools
import time

import timm
import torch
import torch.nn.functional as F
from data_difficulty import evaluate

IMAGE, PATCH, SQUARE = 64, 8, 16


def squares(n: int, cue: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noise images with a bright square, and their labels (0/1) under ``cue``."""
    x = torch.randn(n, 3, IMAGE, IMAGE, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    half = IMAGE // 2
    for i in range(n):
        left = int(torch.randint(0, half - SQUARE + 1, (), generator=g))
        top = int(torch.randint(0, IMAGE - SQUARE + 1, (), generator=g))
        if cue == "side":  # always a square; the label is its half
            x[i, :, top:top + SQUARE, left + half * int(y[i]):left + half * int(y[i]) + SQUARE] += 1.5
        elif y[i]:  # presence: a square (left half) or none
            x[i, :, top:top + SQUARE, left:left + SQUARE] += 1.5
    return x, y


def probe(cue: str, depth: int, pos_embed_std: float, steps: int, lr: float, batch_size: int) -> dict:
    """Train DeiT-T (proxy width and patch) on ``cue``; mean loss of the first and last 20 steps, accuracy on
    512 fresh images."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", num_classes=2, img_size=IMAGE, patch_size=PATCH,
                              embed_dim=192, depth=depth)  # fmt: skip
    torch.nn.init.trunc_normal_(model.pos_embed, std=pos_embed_std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        x, y = squares(batch_size, cue, g)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    accuracy = evaluate(model, *squares(512, cue, g))
    return dict(cue=cue, depth=depth, pos_embed_std=pos_embed_std, first_loss=sum(losses[:20]) / 20,
                last_loss=sum(losses[-20:]) / 20, accuracy=accuracy,
                seconds=time.perf_counter() - t0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cue", nargs="+", choices=["presence", "side"], default=["presence", "side"])
    parser.add_argument("--depth", nargs="+", type=int, default=[4])
    parser.add_argument("--pos-embed-std", nargs="+", type=float, default=[0.02])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"DeiT-T, {IMAGE}x{IMAGE}, patch {PATCH}, width 192; AdamW lr {args.lr}, batch {args.batch_size}, "
          f"{args.steps} steps; torch {torch.__version__}, timm {timm.__version__}\n")
    print("| cue | blocks | pos_embed std | loss, first 20 steps | loss, last 20 | accuracy (512 new) | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cue, depth, std in itertools.product(args.cue, args.depth, args.pos_embed_std):
        r = probe(cue, depth, std, args.steps, args.lr, args.batch_size)
        print(f"| {cue} | {depth} | {std} | {r['first_loss']:.3f} | {r['last_loss']:.3f} "
              f"| {r['accuracy']:.3f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
