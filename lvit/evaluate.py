"""``lvit evaluate``: re-measure a checkpoint on an evaluation set by the paper's protocol, no training.

    lvit evaluate --model localvit_tiny --checkpoint localvit_t.pth --dataset imagenet --data-root data

The checkpoint goes through ``lvit.load_pretrained`` (strict; official LocalViT ``{"model": ...}`` dicts and
official DPT bare state_dicts), then the dataset's protocol runs (``--protocol``, default: the one declared
for a released file, else the dataset's first):

* ``classification`` (``imagenet``): Resize 256 bicubic → CenterCrop 224 → ImageNet mean/std
  (``localvit.md`` §3); top-1, top-5 (percent) and the mean cross-entropy, as the release README prints.
* ``zero_shot`` (``nyu``, ``kitti``, ``eth3d``, ``sintel``, ``tum``, ``diw``): the MiDaS protocol
  (``dpt.md`` §6.1): keep-aspect resize to multiples of 32 near 384 (bicubic), mean = std = 0.5, prediction
  upsampled bilinearly to the GT, per-image scale and shift in disparity, disparity clamped at 1 / cap
  (NYU 10 m, KITTI 80 m; ETH3D and Sintel 72 m, TUM 10 m, where the cap also bounds the valid GT), AbsRel /
  δ>1.25 / RMSE per image; DIW: WHDR over its point pairs. NYU uses the official 654 test images with
  ``rawDepths`` and no crop; KITTI uses the Eigen test images with GT after the KB crop (the MiDaS gist used
  the KITTI depth-selection set, which lvit does not load); the other four sets: ``lvit.data.zero_shot``.
* ``metric`` (``nyu``, ``kitti``; the fine-tuned release files): DPT ``EVALUATION.md`` (``dpt.md`` §2.8,
  §6.3): the input at its own size (NYU 480×640; KITTI's KB crop 352×1216), depth = 1 / (scale·out + shift),
  written through a uint16 PNG as ``run_monodepth.py`` does, then BTS ``eval_with_pngs.py``: prediction
  clipped to [1e-3, cap], Eigen crop (NYU, cap 10 m) or Garg crop on the full KITTI frame (cap 80 m),
  δ1-3 (fractions), AbsRel, SqRel, RMSE, RMSElog, SILog, log10, each per image, then the mean.
* ``single_scale`` / ``ms_flip`` (``ade20k``): ``run_segmentation.py`` (keep-aspect resize near 480,
  bicubic logits back to the image) or PyTorch-Encoding's multi-scale + flip evaluation (long side
  520 × {0.5, 0.75, 1, 1.25, 1.5, 1.75}, 480 crops with a 2/3 stride sliding window, flipped copy added,
  bilinear); pixAcc and mIoU (percent) accumulated over the whole set (``dpt.md`` §6.2).

Procedural stand-ins run the same code: ``local_shapes`` (classification) and ``scenes`` (``zero_shot``,
``single_scale``, ``ms_flip``), rendered at the model's input size and normalised as the engine trains on
them (``lvit.data.build_dataset``: ImageNet's mean and std for ``local_shapes``, DPT's 0.5 and 0.5 for
``scenes``), and sized by the model (``net_size`` = its input side).

Result rows go to ``results/pretrained/<experiment>.csv`` (row = the checkpoint's file name) with the
checkpoint's sha256 in the provenance. A run off the published protocol (``--limit``, ``--depth-cap``,
``--net-size``) is marked in its row, e.g. ``dpt_large-midas-2f21e586.pt [cap 80 m]``, so the report never
compares it with the paper's number. A checkpoint that does not load writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

if TYPE_CHECKING:
    import pandas as pd

from lvit import metrics
from lvit.experiments.pretrained import (
    METRIC_DEPTH,
    RESULT_PROFILE,
    ZERO_SHOT_DEPTH_CAP,
    ZERO_SHOT_METRIC,
    MetricDepthOutput,
    ReleasedCheckpoint,
    released_checkpoint,
)

PROTOCOL_TASK: Mapping[str, str] = {
    "classification": "classification",
    "zero_shot": "depth",
    "metric": "depth",
    "single_scale": "segmentation",
    "ms_flip": "segmentation",
}

# Dataset -> its protocols, the default first.
DATASET_PROTOCOLS: Mapping[str, tuple[str, ...]] = {
    "imagenet": ("classification",),
    "nyu": ("zero_shot", "metric"),
    "kitti": ("zero_shot", "metric"),
    "ade20k": ("ms_flip", "single_scale"),
    "eth3d": ("zero_shot",),
    "diw": ("zero_shot",),
    "sintel": ("zero_shot",),
    "tum": ("zero_shot",),
    "local_shapes": ("classification",),
    "scenes": ("zero_shot", "single_scale", "ms_flip"),
}
PROCEDURAL: tuple[str, ...] = ("local_shapes", "scenes")

# The result experiment of each real (dataset, protocol); procedural ones get pretrained_<dataset>_<task>.
_RESULT_EXPERIMENT: Mapping[tuple[str, str], str] = {
    ("imagenet", "classification"): "pretrained_localvit_imagenet",
    **{(d, "zero_shot"): "pretrained_dpt_zero_shot" for d in ZERO_SHOT_METRIC},
    ("nyu", "metric"): "pretrained_dpt_nyu",
    ("kitti", "metric"): "pretrained_dpt_kitti",
    ("ade20k", "ms_flip"): "pretrained_dpt_ade20k",
    ("ade20k", "single_scale"): "pretrained_dpt_ade20k",
}

# Network input sides of the released models (dpt.md §2.8): depth 384, segmentation 480.
DEPTH_NET_SIZE = 384
SEGMENTATION_NET_SIZE = 480
# The input side each resizing protocol targets on real data (``metric`` runs at the image's own size).
PROTOCOL_NET_SIZE: Mapping[str, int] = {
    "zero_shot": DEPTH_NET_SIZE, "single_scale": SEGMENTATION_NET_SIZE, "ms_flip": SEGMENTATION_NET_SIZE,
}
# PyTorch-Encoding's ADE20K multi-scale evaluation: base size 520, crop 480, these scales, flip, stride 2/3.
MS_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
MS_BASE_OVER_CROP = 520 / 480
MS_STRIDE_RATE = 2 / 3
DPT_MEAN_STD = 0.5
IGNORE_INDEX = -1
SCENES_DEPTH_CAP = 80.0  # the engine's DepthTask evaluation cap on the procedural scenes


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class EvalOptions:
    """Protocol settings; ``None`` takes the protocol's value (real data) or the model's size (procedural)."""

    net_size: int | None = None  # DPT resize target side (depth 384, segmentation 480)
    depth_cap: float | None = None  # zero-shot cap in metres (NYU 10, KITTI 80; ETH3D, Sintel, TUM: also the
    # upper bound of their valid ground truth)
    batch_size: int = 64  # classification batches; dense sets run image by image (sizes differ)
    num_workers: int = 0
    limit: int | None = None  # evaluate only the first N samples (a quick check; recorded in the config)
    samples: int = 64  # procedural sets: number of samples rendered
    image_size: int | None = None  # procedural sets: render side (default: the model's input side)


# ------------------------------------------------------------------------------------------ protocols


def _samples(dataset: Dataset, device: torch.device, desc: str, num_workers: int) -> Iterator[dict[str, Any]]:
    """One sample dict at a time on ``device`` (dense sets have images of different sizes), with progress."""
    from lvit.engine.loop import iterate_batches

    size = len(dataset)  # type: ignore[arg-type]
    batches = iterate_batches(dataset, range(size), 1, device, num_workers, drop_last=False)
    for batch in tqdm(batches, desc=desc, unit="image", total=size):
        yield {k: v[0] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def dpt_input(image: torch.Tensor, net_size: int, normalized: bool) -> torch.Tensor:
    """``(1, 3, h, w)`` network input: keep-aspect "minimal" resize to multiples of 32 (bicubic) and, for the
    real datasets, mean = std = 0.5 (``dpt.md`` §2.8)."""
    from lvit.data.transforms import dpt_resize_shape

    size = dpt_resize_shape(image.shape[-2], image.shape[-1], net_size)
    x = F.interpolate(image[None].float(), size=size, mode="bicubic", align_corners=False)
    return (x - DPT_MEAN_STD) / DPT_MEAN_STD if normalized else x


@torch.no_grad()
def evaluate_classification(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int, num_workers: int = 0
) -> dict[str, float]:
    """Top-1 / top-5 in percent and the mean cross-entropy over ``dataset`` of ``(image, label)``."""
    from lvit.engine.loop import iterate_batches

    _check_class_folders(model, dataset)
    size = len(dataset)  # type: ignore[arg-type]
    batches = iterate_batches(dataset, range(size), batch_size, device, num_workers, drop_last=False)
    top1 = top5 = loss = 0.0
    count = 0
    for images, labels in tqdm(batches, desc="evaluate", unit="batch", total=math.ceil(size / batch_size)):
        logits = model(images).float()
        n = len(labels)
        top1 += float(metrics.top1(logits, labels)) * n
        top5 += float(metrics.top5(logits, labels)) * n
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += n
    return {"top1": top1 / count, "top5": top5 / count, "loss": loss / count}


def _check_class_folders(model: nn.Module, dataset: Dataset) -> None:
    """Refuse a class-folder set (ImageNet val, possibly under ``--limit``) with another class count than
    the model's: its labels are indices of the sorted folders, so with a class missing every later label
    would name the wrong class and top-1 would be wrong without an error."""
    folders = getattr(dataset, "classes", None) or getattr(getattr(dataset, "dataset", None), "classes", None)
    classes = getattr(model, "num_classes", None)
    if folders is not None and classes is not None and len(folders) != classes:
        raise ValueError(f"the evaluation set has {len(folders)} class folders but the model predicts "
                         f"{classes} classes; its labels are indices of the sorted folders, so all {classes} "
                         "must be there")


def _mean_per_image(per_image: Mapping[str, list[float]]) -> dict[str, float]:
    return {k: float(torch.tensor(v, dtype=torch.float64).nanmean()) for k, v in per_image.items()}


@torch.no_grad()
def evaluate_zero_shot(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    name: str,
    net_size: int,
    normalized: bool,
    depth_cap: float | None,
    num_workers: int = 0,
) -> dict[str, float]:
    """MiDaS zero-shot protocol; metrics named ``<name>_abs_rel``, ``<name>_delta_error``, ``<name>_rmse``
    (or ``<name>_whdr`` for samples carrying DIW ``pairs``, which need no ``depth_cap``), means over
    images."""
    per_image: dict[str, list[float]] = {}
    for sample in _samples(dataset, device, f"evaluate {name}", num_workers):
        image = sample["image"]
        pred = model(dpt_input(image, net_size, normalized)).float()
        pred = F.interpolate(pred[:, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        if "pairs" in sample:
            values = {"whdr": metrics.whdr(pred, sample["pairs"], pred_is_inverse_depth=True)}
        else:
            values = metrics.evaluate_zero_shot(pred, sample["depth"], sample["valid"], depth_cap)
        for key, value in values.items():
            per_image.setdefault(f"{name}_{key}", []).append(float(value))
    return _mean_per_image(per_image)


def bts_errors(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """BTS ``compute_errors`` on the valid pixels of one image (1-D tensors, metres)."""
    pred, gt = pred.double(), gt.double()
    ratio = torch.maximum(gt / pred, pred / gt)
    log_diff = torch.log(pred) - torch.log(gt)
    return {
        "d1": float((ratio < 1.25).double().mean()),
        "d2": float((ratio < 1.25**2).double().mean()),
        "d3": float((ratio < 1.25**3).double().mean()),
        "abs_rel": float(((gt - pred).abs() / gt).mean()),
        "sq_rel": float(((gt - pred) ** 2 / gt).mean()),
        "rmse": float(((gt - pred) ** 2).mean().sqrt()),
        "rmse_log": float((log_diff**2).mean().sqrt()),
        "silog": float(((log_diff**2).mean() - log_diff.mean() ** 2).sqrt() * 100),
        "log10": float((torch.log10(pred) - torch.log10(gt)).abs().mean()),
    }


def metric_depth(output: torch.Tensor, spec: MetricDepthOutput) -> torch.Tensor:
    """Fine-tuned model output -> metres as ``run_monodepth.py`` writes it: 1 / (scale·out + shift), floored
    at 1e-8 before inverting, then through a uint16 PNG of depth × factor (truncating, as ``astype``)."""
    inverse = (spec.scale * output.double() + spec.shift).clamp(min=1e-8)
    png = (1.0 / inverse * spec.png_factor).clamp(max=65535).floor()
    return png / spec.png_factor


def _kb_crop_box(height: int, width: int) -> tuple[int, int]:
    return height - 352, (width - 1216) // 2


@torch.no_grad()
def evaluate_metric_depth(
    model: nn.Module, dataset: Dataset, device: torch.device, spec: MetricDepthOutput, num_workers: int = 0
) -> dict[str, float]:
    """DPT EVALUATION.md on NYUv2 (``crop="eigen"``) or KITTI (``crop="garg"``); means over images.

    KITTI samples come at full frame size with the Garg crop in ``valid``; the network sees the KB crop
    (bottom 352 rows, centred 1216 columns) and its prediction is placed back into a zero frame, as BTS
    ``--do_kb_crop`` does. Pixels outside the KB crop are outside the Garg crop too.
    """
    per_image: dict[str, list[float]] = {}
    for sample in _samples(dataset, device, "evaluate", num_workers):
        image, gt, valid = sample["image"], sample["depth"], sample["valid"]
        height, width = image.shape[-2:]
        top, left = _kb_crop_box(height, width) if spec.crop == "garg" else (0, 0)
        net_h, net_w = (352, 1216) if spec.crop == "garg" else (height, width)
        crop = image[:, top : top + net_h, left : left + net_w]
        output = model(dpt_input(crop, max(net_h, net_w), normalized=True)).float()
        output = F.interpolate(output[:, None], (net_h, net_w), mode="bicubic", align_corners=False)[0, 0]
        pred = torch.zeros_like(gt, dtype=torch.float64)
        pred[top : top + net_h, left : left + net_w] = metric_depth(output, spec)
        pred = pred.clamp(spec.min_depth, spec.max_depth)  # BTS clips low, high and inf predictions
        mask = valid & (gt > spec.min_depth) & (gt < spec.max_depth)
        if not mask.any():
            continue
        for key, value in bts_errors(pred[mask], gt[mask]).items():
            per_image.setdefault(key, []).append(value)
    return _mean_per_image(per_image)


def _sliding_logits(model: nn.Module, image: torch.Tensor, crop: int, pad_value: float) -> torch.Tensor:
    """PyTorch-Encoding ``MultiEvalModule`` at one scale: pad to ``crop`` (black), slide ``crop`` windows
    with a 2/3 stride, add the flipped window's prediction, average overlaps. ``image``: (1, 3, h, w)."""
    _, _, height, width = image.shape
    padded = F.pad(image, (0, max(0, crop - width), 0, max(0, crop - height)), value=pad_value)
    ph, pw = padded.shape[-2:]
    stride = int(MS_STRIDE_RATE * crop)
    tops = [min(i * stride, ph - crop) for i in range(math.ceil((ph - crop) / stride) + 1)]
    lefts = [min(i * stride, pw - crop) for i in range(math.ceil((pw - crop) / stride) + 1)]
    logits: torch.Tensor | None = None
    count = torch.zeros(1, 1, ph, pw, device=image.device)
    for top in tops:
        for left in lefts:
            window = padded[..., top : top + crop, left : left + crop]
            out = model(window).float() + model(window.flip(-1)).float().flip(-1)
            if logits is None:
                logits = out.new_zeros(1, out.shape[1], ph, pw)
            logits[..., top : top + crop, left : left + crop] += out
            count[..., top : top + crop, left : left + crop] += 1
    return (logits / count)[..., :height, :width]


def ms_flip_logits(
    model: nn.Module, image: torch.Tensor, crop: int, normalized: bool, scales: Sequence[float] = MS_SCALES
) -> torch.Tensor:
    """Summed multi-scale + flip logits ``(1, C, H, W)`` of one ``(3, H, W)`` image in [0, 1]."""
    height, width = image.shape[-2:]
    base = round(crop * MS_BASE_OVER_CROP)
    black = -DPT_MEAN_STD / DPT_MEAN_STD if normalized else 0.0  # PyTorch-Encoding pads with -mean/std
    total = torch.zeros(())
    for scale in scales:
        long_side = math.ceil(base * scale)
        if height > width:
            size = (long_side, int(width * long_side / height + 0.5))
        else:
            size = (int(height * long_side / width + 0.5), long_side)
        x = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=True)
        x = (x - DPT_MEAN_STD) / DPT_MEAN_STD if normalized else x
        out = _sliding_logits(model, x, crop, black)
        total = total + F.interpolate(out, size=(height, width), mode="bilinear", align_corners=True)
    return total


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    num_classes: int,
    protocol: str,
    net_size: int,
    normalized: bool,
    num_workers: int = 0,
) -> dict[str, float]:
    """pixAcc / mIoU in percent; ``single_scale`` names them with a ``_single_scale`` suffix."""
    meter = metrics.SegmentationMeter(num_classes, IGNORE_INDEX)
    for sample in _samples(dataset, device, f"evaluate {protocol}", num_workers):
        image, labels = sample["image"], sample["labels"]
        if protocol == "ms_flip":
            logits = ms_flip_logits(model, image, net_size, normalized)
        else:
            logits = model(dpt_input(image, net_size, normalized)).float()
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bicubic", align_corners=False)
        meter.update(logits.argmax(1)[0], labels)
    suffix = "_single_scale" if protocol == "single_scale" else ""
    return {f"{k}{suffix}": v for k, v in meter.compute().items()}
# ------------------------------------------------------------------------------------- datasets, model


def input_side(model: nn.Module) -> int:
    """The side of the square input a (possibly shrunk) model was built for: its patch embedding's."""
    embed = getattr(getattr(model, "backbone", model), "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is None:
        raise ValueError(f"cannot tell the input size of {type(model).__name__}; pass --image-size")
    return int(size[0] if isinstance(size, Sequence) else size)


def build_eval_dataset(
    dataset: str, protocol: str, data_root: str | Path, options: EvalOptions, model: nn.Module | None = None
) -> tuple[Dataset, str]:
    """The evaluation set of ``dataset`` for ``protocol`` and the name of its split. Procedural sets need
    the ``model``: they are rendered at its input size with its class count."""
    from lvit.data import build_dataset
    from lvit.data.datasets import ADE20K, KITTIDepth, NYUv2
    from lvit.data.zero_shot import DIW, ETH3D, TUM, Sintel

    if dataset in PROCEDURAL:
        if model is None:
            raise ValueError(f"the procedural {dataset!r} set is sized by the model: pass it")
        side = options.image_size or input_side(model)
        split = "test" if protocol == "zero_shot" else "val"
        recipe: dict[str, Any] = {"image_size": side, f"{split}_samples": options.samples}
        if dataset == "local_shapes":
            recipe["num_classes"] = model.num_classes
        built = build_dataset(dataset, split, recipe, data_root)
    elif dataset == "imagenet":
        split, built = "val", build_dataset("imagenet", "val", {"image_size": 224}, data_root)
    elif dataset == "nyu":  # zero-shot: no crop (MiDaS gist); metric: Eigen crop (BTS --eigen_crop)
        built = NYUv2(data_root, "test", depth_key="rawDepths", eigen_crop=protocol == "metric")
        split = "test"
    elif dataset == "kitti":  # zero-shot: the KB-cropped frame; metric: full frame, Garg crop (BTS)
        metric = protocol == "metric"
        split, built = "test", KITTIDepth(data_root, "test", garg_crop=metric, kb_crop=not metric)
    elif dataset == "ade20k":
        split, built = "val", ADE20K(data_root, "val")
    elif dataset == "diw":
        split, built = "test", DIW(data_root)
    else:  # ETH3D, Sintel, TUM: valid below the cap the alignment clamps at
        capped = {"eth3d": ETH3D, "sintel": Sintel, "tum": TUM}[dataset]
        split, built = "test", capped(data_root, max_depth=zero_shot_cap(dataset, options))
    if options.limit is not None:
        built = Subset(built, range(min(options.limit, len(built))))  # type: ignore[arg-type]
    return built, split


def segmentation_classes(dataset: str) -> int:
    from lvit.data import SCENE_CLASSES
    from lvit.data.datasets import ADE20K_NUM_CLASSES

    return len(SCENE_CLASSES) if dataset == "scenes" else ADE20K_NUM_CLASSES


def build_model(
    name: str, protocol: str, dataset: str, model_kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    """The lvit model for ``protocol``: DPT models get the task (and ADE20K / Scenes class count)."""
    from lvit import create_model
    from lvit.models.dpt import dpt_model_names

    kwargs: dict[str, Any] = {}
    task = PROTOCOL_TASK[protocol]
    dense = name in dpt_model_names()
    if dense != (task != "classification"):  # else the model fails deep inside, on a task or a tensor shape
        needs = f"a DPT model ({', '.join(dpt_model_names())})" if not dense else "a classification model"
        raise ValueError(f"{dataset!r} by protocol {protocol!r} evaluates {task}: it needs {needs}, "
                         f"not {name!r}")
    if dense:
        kwargs["task"] = task
        if task == "segmentation":
            kwargs["num_classes"] = segmentation_classes(dataset)
    return create_model(name, **{**kwargs, **dict(model_kwargs or {})})


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """``lvit.load_pretrained`` (strict); any failure becomes a :class:`CheckpointError` naming the file."""
    from lvit import load_pretrained

    try:
        load_pretrained(model, path)
    except (ValueError, RuntimeError) as err:  # unreadable file, or keys / shapes that do not fit
        raise CheckpointError(
            f"cannot load checkpoint {path} into {type(model).__name__}: {type(err).__name__}: {err}. "
            "Is it a LocalViT release file ({'model': state_dict}), a DPT release file (bare state_dict) "
            "or an lvit checkpoint of this exact model and size?"
        ) from err


def run_protocol(
    model: nn.Module, dataset: str, protocol: str, data: Dataset, device: torch.device, options: EvalOptions
) -> dict[str, float]:
    """Evaluate ``model`` (already on ``device``, eval mode) on ``data`` by ``protocol``."""
    procedural = dataset in PROCEDURAL
    workers = options.num_workers
    if protocol == "classification":
        return evaluate_classification(model, data, device, options.batch_size, workers)
    if protocol == "metric":
        return evaluate_metric_depth(model, data, device, METRIC_DEPTH[dataset], workers)
    if procedural:
        net_size = options.net_size or options.image_size or input_side(model)
    else:
        net_size = options.net_size or PROTOCOL_NET_SIZE[protocol]
    if protocol == "zero_shot":
        cap = zero_shot_cap(dataset, options)
        return evaluate_zero_shot(model, data, device, dataset, net_size, not procedural, cap, workers)
    classes = segmentation_classes(dataset)
    return evaluate_segmentation(model, data, device, classes, protocol, net_size, not procedural, workers)


def zero_shot_cap(dataset: str, options: EvalOptions) -> float | None:
    """The zero-shot depth cap in metres: ``options.depth_cap``, else the dataset's protocol cap (the engine's
    for the procedural scenes); None for DIW, which is scored on point pairs and has no depth to clamp."""
    if dataset == "diw":
        return None
    if options.depth_cap is not None:
        if not options.depth_cap > 0:
            raise ValueError(f"--depth-cap must be positive, got {options.depth_cap}")
        return options.depth_cap
    return SCENES_DEPTH_CAP if dataset in PROCEDURAL else ZERO_SHOT_DEPTH_CAP[dataset]


def protocol_departures(dataset: str, protocol: str, options: EvalOptions) -> str:
    """The row label's marks for a run off the published protocol (a subset, another cap or input size),
    e.g. `` [first 100] [cap 80 m]``; "" for the protocol itself. Such a row must not stand in for the
    file's."""
    marks = [] if options.limit is None else [f"first {options.limit}"]
    if dataset not in PROCEDURAL:
        published = EvalOptions()
        if protocol == "zero_shot" and zero_shot_cap(dataset, options) != zero_shot_cap(dataset, published):
            marks.append(f"cap {options.depth_cap:g} m")
        net_size = PROTOCOL_NET_SIZE.get(protocol)
        if options.net_size is not None and net_size is not None and options.net_size != net_size:
            marks.append(f"net {options.net_size}")
    return "".join(f" [{mark}]" for mark in marks)


def result_experiment(dataset: str, protocol: str) -> str:
    if dataset in PROCEDURAL:
        return f"pretrained_{dataset}_{PROTOCOL_TASK[protocol]}"
    return _RESULT_EXPERIMENT[(dataset, protocol)]


def resolve_protocol(dataset: str, protocol: str | None, checkpoint: str | Path) -> str:
    """``protocol`` checked against ``dataset``; by default the released file's, else the dataset's first."""
    if dataset not in DATASET_PROTOCOLS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASET_PROTOCOLS)}")
    valid = DATASET_PROTOCOLS[dataset]
    if protocol is None:
        released = released_checkpoint(str(checkpoint))
        protocol = released.protocol if released is not None and released.protocol in valid else valid[0]
    if protocol not in valid:
        raise ValueError(
            f"protocol {protocol!r} does not apply to {dataset!r}; valid protocols: {', '.join(valid)}"
        )
    return protocol


def evaluate_checkpoint(
    model: str,
    checkpoint: str | Path,
    dataset: str,
    data_root: str | Path = "data",
    protocol: str | None = None,
    device: str = "auto",
    options: EvalOptions = EvalOptions(),
    model_kwargs: Mapping[str, Any] | None = None,
    results_dir: str | Path | None = None,
    row: str | None = None,
) -> dict[str, float]:
    """Load ``checkpoint`` into ``model``, evaluate it on ``dataset`` by ``protocol``; return the metrics.

    With ``results_dir``, also write one result row per metric to
    ``<results_dir>/pretrained/<experiment>.csv`` (row: ``row`` or the checkpoint's file name, marked by
    :func:`protocol_departures` when ``options`` leave the published protocol), with the checkpoint's sha256
    in the provenance. Nothing is written unless loading and evaluation succeed.
    """
    from lvit.engine.loop import resolve_device
    from lvit.results import append_results, provenance

    protocol = resolve_protocol(dataset, protocol, checkpoint)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
    procedural = dataset in PROCEDURAL
    if not procedural:  # a missing or malformed dataset fails before a large model is built
        data, split = build_eval_dataset(dataset, protocol, data_root, options)
    sha256 = sha256_file(checkpoint)
    net = build_model(model, protocol, dataset, model_kwargs)
    load_checkpoint(net, checkpoint)
    torch_device = resolve_device(device)
    net.to(torch_device).eval()
    if procedural:  # rendered at the model's size and class count
        data, split = build_eval_dataset(dataset, protocol, data_root, options, net)
    started_at, start = datetime.now(timezone.utc), time.perf_counter()
    measured = run_protocol(net, dataset, protocol, data, torch_device, options)
    if results_dir is not None:
        config = {"model": model, "model_kwargs": dict(model_kwargs or {}), "dataset": dataset,
                  "protocol": protocol, "options": asdict(options)}
        prov = provenance(RESULT_PROFILE, 0, str(torch_device), config, started_at,
                          time.perf_counter() - start, checkpoint_sha256=sha256)
        label = row or checkpoint.name + protocol_departures(dataset, protocol, options)
        records = [{**prov, "row": label, "metric": k, "value": v, "split": split, "epoch": None}
                   for k, v in measured.items()]
        append_results(results_dir, RESULT_PROFILE, result_experiment(dataset, protocol), records)
    return measured


def evaluate_command(
    model: str, checkpoint: str, dataset: str, data_root: str = "data", protocol: str | None = None
) -> str:
    """The ``lvit evaluate`` command line that re-measures ``checkpoint`` on ``dataset``."""
    parts = ["lvit evaluate", f"--model {model}", f"--checkpoint {checkpoint}", f"--dataset {dataset}",
             f"--data-root {data_root}"]
    if protocol is not None:
        parts.append(f"--protocol {protocol}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------ CLI


def _command(args: argparse.Namespace) -> int:
    options = EvalOptions(net_size=args.net_size, depth_cap=args.depth_cap, batch_size=args.batch_size,
                          num_workers=args.workers, limit=args.limit, samples=args.samples,
                          image_size=args.image_size)
    from lvit.reproduce import project_root

    results_dir = args.results_dir or project_root() / "results"  # where the notebooks read results
    try:
        model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
        measured = evaluate_checkpoint(args.model, args.checkpoint, args.dataset, args.data_root,
                                       args.protocol, args.device, options, model_kwargs, results_dir,
                                       args.row)
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"lvit evaluate: error: {err}", file=sys.stderr)
        return 2
    width = max(map(len, measured))
    for name, value in measured.items():
        print(f"{name:<{width}}  {value:.6g}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="re-measure a (released) checkpoint on an evaluation set by the paper's protocol",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="lvit model name (e.g. localvit_tiny, dpt_hybrid)")
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint file to evaluate")
    parser.add_argument("--dataset", required=True, choices=list(DATASET_PROTOCOLS))
    parser.add_argument("--data-root", default="data", metavar="DIR", help="dataset root (default: data)")
    parser.add_argument("--protocol", choices=list(PROTOCOL_TASK),
                        help="default: the released file's protocol, else the dataset's first")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=int, default=64, help="classification batch size")
    parser.add_argument("--workers", type=int, default=0, help="data loader workers")
    parser.add_argument("--results-dir", metavar="DIR",
                        help="result store root (default: <project>/results); rows go to <DIR>/pretrained/")
    parser.add_argument("--row", help="result row label (default: the checkpoint's file name)")
    parser.add_argument("--model-kwargs", metavar="JSON", help="extra model constructor kwargs, as JSON")
    parser.add_argument("--net-size", type=int, help="DPT resize target side (default: 384 depth, 480 seg.)")
    parser.add_argument("--depth-cap", type=float, help="zero-shot cap, metres (default: per dataset); for "
                        "ETH3D, Sintel and TUM also the upper bound of the valid ground truth")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")
    parser.add_argument("--samples", type=int, default=64, help="procedural sets: samples (default: 64)")
    parser.add_argument("--image-size", type=int, help="procedural sets: image side (default: the model's)")
    parser.set_defaults(func=_command)


# ------------------------------------------------------------------------- released checkpoints table


def released_command(released: ReleasedCheckpoint, dataset: str, checkpoint_dir: str, data_root: str) -> str:
    """The command re-measuring ``released`` on ``dataset`` (its protocol spelled out where the dataset has
    several, so that a renamed file still gets it); the reason instead when lvit lacks the model."""
    if not released.model:
        return released.note
    protocol = released.protocol if len(DATASET_PROTOCOLS[dataset]) > 1 else None
    return evaluate_command(released.model, f"{checkpoint_dir}/{released.file}", dataset, data_root, protocol)


def released_commands(checkpoint_dir: str = "checkpoints", data_root: str = "data") -> list[str]:
    """For every released file lvit builds, the commands that re-measure each of its published numbers."""
    from lvit.experiments.pretrained import RELEASED_CHECKPOINTS

    return [released_command(c, dataset, checkpoint_dir, data_root)
            for c in RELEASED_CHECKPOINTS if c.model for dataset in c.datasets]


def released_table(
    results_dir: str | Path, checkpoint_dir: str = "checkpoints", data_root: str = "data"
) -> pd.DataFrame:
    """Expected (published) | measured | delta for every published number of every released checkpoint.

    ``measured`` is the newest ``pretrained`` result of that file (row = file name) and metric, NaN when
    missing; ``command`` is what fills a missing one (or why it cannot be filled).
    """
    import pandas as pd

    from lvit.experiments import get_experiment
    from lvit.experiments.pretrained import RELEASED_CHECKPOINTS
    from lvit.results import latest_results, load_results

    latest = latest_results(load_results(results_dir, profile=RESULT_PROFILE))
    measured = latest.set_index(["experiment", "row", "metric"])["value"]
    metric_dataset = {metric: dataset for dataset, metric in ZERO_SHOT_METRIC.items()}
    records = []
    for released in RELEASED_CHECKPOINTS:
        experiment = get_experiment(released.experiment)
        for metric, expected in experiment.row(released.file).published.items():
            value = measured.get((released.experiment, released.file, metric), float("nan"))
            dataset = metric_dataset.get(metric, released.datasets[0])
            command = released_command(released, dataset, checkpoint_dir, data_root)
            records.append({"checkpoint": released.file, "dataset": dataset, "metric": metric,
                            "expected": expected, "measured": value, "delta": value - expected,
                            "command": "" if value == value else command})
    return pd.DataFrame(records)
