"""Monocular depth inference as the official DPT pipeline runs it (``run_monodepth.py``, dpt.md §2.8).

RGB in [0, 1] → keep the aspect ratio and resize so both sides are multiples of 32 ("minimal" rule:
scale by whichever factor is closer to 1, round each side to the nearest multiple) with bicubic
interpolation → normalise with mean = std = 0.5 → model → bicubic resize of the prediction back to the
input size. The official code resizes with OpenCV's ``INTER_CUBIC``; here torch's bicubic (same a = -0.75
kernel, half-pixel centres, no antialiasing) does it.

``lvit depth IMAGE... --checkpoint FILE --out DIR`` writes ``<name>.png`` (16-bit, min/max normalised,
as the official ``write_depth``) and ``<name>_preview.png`` (colour-mapped).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

MEAN = STD = 0.5


def constrain_to_multiple_of(value: float, multiple: int) -> int:
    """The official rounding: nearest multiple (numpy's half-to-even), never below one multiple."""
    return max(multiple, int(np.round(value / multiple) * multiple))


def inference_size(height: int, width: int, net_size: int = 384, multiple: int = 32) -> tuple[int, int]:
    """(H, W) by the official ``Resize(net, net, keep_aspect_ratio=True, ensure_multiple_of=32,
    resize_method="minimal")``."""
    scale_height, scale_width = net_size / height, net_size / width
    # Keep the aspect ratio: use the scale that changes the image least.
    scale = scale_width if abs(1 - scale_width) < abs(1 - scale_height) else scale_height
    return tuple(constrain_to_multiple_of(scale * side, multiple) for side in (height, width))


def load_image(image: np.ndarray | str | Path) -> np.ndarray:
    """RGB float32 (H, W, 3) in [0, 1] from a path or an array (uint8 in [0, 255] or float in [0, 1])."""
    if isinstance(image, (str, Path)):
        image = np.asarray(Image.open(image).convert("RGB"))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3) or a grey image (H, W); got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32)


@torch.no_grad()
def predict_depth(model: nn.Module, image: np.ndarray | str | Path, net_size: int = 384) -> np.ndarray:
    """Relative inverse depth (H, W) of one image at its own resolution, by the official pipeline.

    ``model`` is a DPT depth model (``lvit.create_model("dpt_hybrid")`` + ``lvit.load_pretrained``);
    ``net_size`` is the training resolution the resize targets (384 for the released depth models).
    """
    task = getattr(model, "task", "depth")
    if task != "depth":  # refused here: a segmentation head's (B, C, H, W) fails deep inside the resize
        raise ValueError(f"predict_depth needs a depth model (task='depth'); this model has task={task!r}")
    rgb = load_image(image)
    height, width = rgb.shape[:2]
    param = next(model.parameters())
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device=param.device, dtype=param.dtype)
    x = F.interpolate(x, size=inference_size(height, width, net_size), mode="bicubic", align_corners=False)
    x = (x - MEAN) / STD
    model.eval()
    prediction = model(x)
    prediction = F.interpolate(prediction[:, None], size=(height, width), mode="bicubic", align_corners=False)
    return prediction[0, 0].float().cpu().numpy()


def to_uint16(depth: np.ndarray) -> np.ndarray:
    """Official ``write_depth(bits=2)``: min/max normalised to 0..65535; a constant map becomes 0."""
    low, high = float(depth.min()), float(depth.max())
    if high - low <= np.finfo(np.float32).eps:
        return np.zeros(depth.shape, dtype=np.uint16)
    return (65535 * (depth - low) / (high - low)).astype(np.uint16)


def write_depth(depth: np.ndarray, out_dir: Path, name: str, colormap: str = "inferno") -> list[Path]:
    """Write ``name.png`` (16-bit) and ``name_preview.png`` (colour-mapped, 8-bit RGB)."""
    import matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    raw = to_uint16(depth)
    png, preview = out_dir / f"{name}.png", out_dir / f"{name}_preview.png"
    Image.fromarray(raw).save(png)
    colours = matplotlib.colormaps[colormap](raw.astype(np.float32) / 65535)[..., :3]
    Image.fromarray((colours * 255).astype(np.uint8)).save(preview)
    return [png, preview]


def _run(args: argparse.Namespace) -> int:
    from lvit import create_model
    from lvit.evaluate import CheckpointError, load_checkpoint
    from lvit.experiments.base import did_you_mean
    from lvit.models.dpt import dpt_model_names

    # every input checked before any work: a typo is a message, not a traceback
    missing = [p for p in [*args.images, args.checkpoint] if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"lvit depth: no such file: {', '.join(missing)}")
    unreadable = [p for p in args.images if not _is_image(p)]
    if unreadable:
        raise SystemExit(f"lvit depth: not an image PIL can read: {', '.join(unreadable)}")
    names = dpt_model_names()
    if args.model not in names:
        raise SystemExit(f"lvit depth: {args.model!r} is not a DPT model{did_you_mean(args.model, names)}; "
                         f"DPT models: {', '.join(names)}")
    model = create_model(args.model, task="depth")
    try:
        load_checkpoint(model, args.checkpoint)
    except CheckpointError as error:
        raise SystemExit(f"lvit depth: {error}") from None
    model.to(args.device)
    for path in tqdm(args.images, desc="depth", unit="image"):
        depth = predict_depth(model, path, net_size=args.net_size)
        for written in write_depth(depth, Path(args.out), Path(path).stem):
            tqdm.write(str(written))
    return 0


def _is_image(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError):  # an unknown format is an OSError to PIL; a broken file raises either
        return False
    return True


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "depth", help="monocular depth with a DPT model (official inference pipeline)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="input image files")
    parser.add_argument("--checkpoint", metavar="FILE", required=True,
                        help="weights: official DPT .pt, HuggingFace DPT state_dict or lvit checkpoint")
    parser.add_argument("--model", default="dpt_hybrid", help="lvit model name (default: dpt_hybrid)")
    parser.add_argument("--out", default="depth_out", metavar="DIR", help="output folder")
    parser.add_argument("--net-size", type=int, default=384, help="resize target (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(func=_run)
