"""``lvit data preview``: an image grid of what the models are trained on.

    lvit data preview --dataset scenes --domain indoor -n 16 --out grid.png
    lvit data preview --dataset dpt_ablation_mix --data-root data --domain redweb --split val --out redweb.png

Scenes show three rows per group: RGB, depth (turbo colour map per image; invalid = black) and semantic
labels (one fixed colour per class). LocalShapes shows the images, ordered by class. DPT's ablation mix
(real files under ``--data-root``) shows RGB and depth as the training loop gets them (the split's crop),
so a loader's conventions can be checked by eye: near is red, far is blue, in every dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import torch
from torchvision.utils import make_grid, save_image

from lvit.data.ablation_mix import ABLATION_DATASETS
from lvit.data.scenes import DOMAINS, SCENE_CLASSES, Scenes
from lvit.data.synthetic import LocalShapes

PREVIEW_DATASETS = ("scenes", "local_shapes", "dpt_ablation_mix")
_DOMAINS = {"scenes": DOMAINS, "dpt_ablation_mix": ABLATION_DATASETS}


def colorize_depth(depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, H, W) metres -> (B, 3, H, W) turbo of inverse depth scaled per image (near = red)."""
    inverse = torch.where(valid, 1.0 / depth.clamp(min=1e-6), torch.zeros_like(depth))
    low = torch.where(valid, inverse, torch.full_like(inverse, float("inf"))).flatten(1).amin(1)
    high = inverse.flatten(1).amax(1)
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
    scaled = (inverse - low[:, None, None]) / (high - low).clamp(min=1e-6)[:, None, None]
    rgb = torch.from_numpy(matplotlib.colormaps["turbo"](scaled.clamp(0, 1).numpy())[..., :3]).float()
    return (rgb * valid[..., None]).permute(0, 3, 1, 2)


def colorize_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) class ids -> (B, 3, H, W) with a fixed palette."""
    palette = torch.tensor(
        matplotlib.colormaps["tab20"](range(len(SCENE_CLASSES)))[:, :3], dtype=torch.float32
    )
    return palette[labels].permute(0, 3, 1, 2)


def preview_grid(
    dataset: str, n: int, image_size: int, split: str, seed: int, domain: str | None, nuisance: float = 1.0,
    data_root: str | Path = "data",
) -> torch.Tensor:
    if n < 1:
        raise ValueError(f"-n is the number of samples to show: at least 1, got {n}")
    if domain is not None and domain not in _DOMAINS.get(dataset, ()):
        valid = ", ".join(_DOMAINS.get(dataset, ())) or "none (it has no domains)"
        raise ValueError(f"--domain {domain!r} is not one of {dataset}'s: {valid}")
    indices = torch.arange(n)
    if dataset == "local_shapes":
        images, _ = LocalShapes(split, n, image_size, seed=seed, nuisance=nuisance).generate(indices)
        return make_grid(images, nrow=min(n, 8), padding=2)
    if dataset == "dpt_ablation_mix":
        return _rows(_real_depth_samples(data_root, split, n, image_size, domain))
    out = Scenes(split, n, image_size, domains=(domain,) if domain else DOMAINS, seed=seed).generate(indices)
    return _rows([out["image"], colorize_depth(out["depth"], out["valid"]), colorize_labels(out["labels"])])


def _real_depth_samples(
    data_root: str | Path, split: str, n: int, image_size: int, domain: str | None
) -> list[torch.Tensor]:
    """The first ``n`` samples of the ablation mix's ``split`` as the loop gets them: RGB and depth."""
    from lvit.data import build_dataset

    recipe = {"image_size": image_size, f"{split}_domains": (domain,) if domain else ABLATION_DATASETS}
    data = build_dataset("dpt_ablation_mix", split, recipe, data_root)
    samples = [data[i] for i in range(min(n, len(data)))]  # type: ignore[arg-type]
    images = torch.stack([s["image"] for s in samples]) * 0.5 + 0.5  # undo DPT's mean = std = 0.5
    depth, valid = torch.stack([s["depth"] for s in samples]), torch.stack([s["valid"] for s in samples])
    return [images.clamp(0, 1), colorize_depth(depth, valid)]


def _rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """Groups of up to 8 samples, one row per part (RGB, depth, ...) in each group."""
    per_row = min(len(parts[0]), 8)
    rows = [make_grid(part[start:start + per_row], nrow=per_row, padding=2)
            for start in range(0, len(parts[0]), per_row) for part in parts]
    return torch.cat(rows, 1)


def _preview(args: argparse.Namespace) -> int:
    try:
        grid = preview_grid(args.dataset, args.n, args.image_size, args.split, args.seed, args.domain,
                            args.nuisance, args.data_root)
    except (ValueError, FileNotFoundError) as error:  # a bad option, or real files not in their layout
        raise SystemExit(f"lvit data preview: {error}") from None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, args.out)
    print(f"wrote {args.out} ({args.n} {args.dataset} samples, {grid.shape[2]}x{grid.shape[1]} px)")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect the procedural datasets and DPT's ablation mix")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    preview = commands.add_parser(
        "preview",
        help="write an image grid (RGB, depth, labels) to a PNG",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    preview.add_argument("--dataset", choices=PREVIEW_DATASETS, default="scenes")
    preview.add_argument("--domain", default=None,
                         help=f"scenes: one of {', '.join(DOMAINS)}; dpt_ablation_mix: one of "
                              f"{', '.join(ABLATION_DATASETS)}; default: all")
    preview.add_argument("-n", type=int, default=16, help="number of samples")
    preview.add_argument("--image-size", type=int, default=128)
    preview.add_argument("--split", choices=("train", "val", "test"), default="train")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--nuisance", type=float, default=1.0,
                         help="local_shapes only: background texture and clutter, 1 (full) to 0 (none)")
    preview.add_argument("--data-root", default="data", help="dpt_ablation_mix only: the dataset root")
    preview.add_argument("--out", default="grid.png")
    preview.set_defaults(func=_preview)
