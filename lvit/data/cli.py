"""``lvit data preview``: an image grid of what the models are trained on.

    lvit data preview --dataset scenes --domain indoor -n 16 --out grid.png
    lvit data preview --dataset dpt_ablation_mix --data-root data --domain redweb --split val --out redweb.png
    lvit data preview --dataset diw --data-root data -n 16 --out diw.png

Scenes show three rows per group: RGB, depth (turbo colour map per image; invalid = black) and semantic
labels (one fixed colour per class). LocalShapes shows the images, ordered by class. DPT's ablation mix
(real files under ``--data-root``) shows RGB and depth as the training loop gets them (the split's crop),
so a loader's conventions can be checked by eye: near is red, far is blue, in every dataset. The zero-shot
test sets (ETH3D, Sintel, TUM) show RGB and depth whole, fitted into the square; DIW shows each image with
its annotated pair as the evaluation reads it: the closer point red, the farther blue. They show their test
set from its start: ``--split`` and ``--seed`` do not apply.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from lvit.data.ablation_mix import ABLATION_DATASETS
from lvit.data.scenes import DOMAINS, SCENE_CLASSES, Scenes
from lvit.data.synthetic import LocalShapes

ZERO_SHOT_PREVIEWS = ("diw", "eth3d", "sintel", "tum")
PREVIEW_DATASETS = ("scenes", "local_shapes", "dpt_ablation_mix", *ZERO_SHOT_PREVIEWS)
_NEAR, _FAR = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)  # DIW's marks: red near, blue far, as in the depth colour map
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
    if dataset in ZERO_SHOT_PREVIEWS:
        return _rows(_zero_shot_samples(dataset, data_root, n, image_size))
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


def _zero_shot_samples(dataset: str, data_root: str | Path, n: int, image_size: int) -> list[torch.Tensor]:
    """The first ``n`` samples of a zero-shot test set as ``lvit evaluate`` reads them, whole: RGB and
    depth, or DIW's RGB with its pair marked."""
    from lvit.evaluate import EvalOptions, build_eval_dataset

    data, _ = build_eval_dataset(dataset, "zero_shot", data_root, EvalOptions(limit=n))
    fitted = [_fit_sample(data[i], image_size) for i in range(len(data))]  # type: ignore[arg-type]
    parts = [torch.stack(part) for part in zip(*fitted, strict=True)]
    if dataset == "diw":
        return parts
    images, depth, valid = parts
    return [images, colorize_depth(depth, valid)]


def _fit_sample(sample: dict[str, torch.Tensor], size: int) -> list[torch.Tensor]:
    """One zero-shot sample shrunk to the preview square as soon as it is read (an ETH3D sample is 0.4 GB):
    DIW's RGB with its pair marked, or RGB, depth and valid mask."""
    if "pairs" in sample:
        return [_fit_square(_mark_pair(sample["image"], sample["pairs"][0]), size)]
    return [_fit_square(sample["image"], size), _fit_square(sample["depth"], size, nearest=True),
            _fit_square(sample["valid"], size, nearest=True)]


def _fit_square(tensor: torch.Tensor, size: int, nearest: bool = False) -> torch.Tensor:
    """``(C, H, W)`` or ``(H, W)`` with its longer side scaled to ``size`` (antialiased bilinear, or nearest
    for depth and masks), padded with zeros to a ``size`` square."""
    grid = tensor.float().reshape(-1, *tensor.shape[-2:])[None]
    height, width = grid.shape[-2:]
    scale = size / max(height, width)
    new_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
    if nearest:
        resized = F.interpolate(grid, size=new_hw, mode="nearest")
    else:
        resized = F.interpolate(grid, size=new_hw, mode="bilinear", antialias=True, align_corners=False)
        resized = resized.clamp(0, 1)
    top, left = (size - new_hw[0]) // 2, (size - new_hw[1]) // 2
    padded = F.pad(resized, (left, size - new_hw[1] - left, top, size - new_hw[0] - top))[0]
    return padded.reshape(*tensor.shape[:-2], size, size).to(tensor.dtype)


def _mark_pair(image: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """``image`` with discs on a DIW pair ``(y1, x1, y2, x2, ordinal)``: closer point red, farther blue."""
    y1, x1, y2, x2, ordinal = (int(v) for v in pair)
    marked = image.clone()
    radius = max(2, round(0.02 * max(image.shape[-2:])))
    rows, cols = torch.meshgrid(torch.arange(image.shape[-2]), torch.arange(image.shape[-1]), indexing="ij")
    colours = (_FAR, _NEAR) if ordinal > 0 else (_NEAR, _FAR)  # ordinal +1: point 1 is the farther
    for (y, x), colour in zip(((y1, x1), (y2, x2)), colours, strict=True):
        disc = (rows - y) ** 2 + (cols - x) ** 2 <= radius**2
        marked[:, disc] = torch.tensor(colour)[:, None]
    return marked


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
    except (ValueError, FileNotFoundError, RuntimeError) as error:  # a bad option, or real files not in their
        # layout or format (the loaders raise RuntimeError naming a malformed file)
        raise SystemExit(f"lvit data preview: {error}") from None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, args.out)
    print(f"wrote {args.out} ({args.n} {args.dataset} samples, {grid.shape[2]}x{grid.shape[1]} px)")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect the procedural datasets and the real ones")
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
    preview.add_argument("--data-root", default="data",
                         help="the real datasets' root (dpt_ablation_mix and the zero-shot test sets)")
    preview.add_argument("--out", default="grid.png")
    preview.set_defaults(func=_preview)
