"""Evaluation metrics of both papers, as pure tensor functions.

Conventions (each chosen to match how the papers print their tables):

* Every metric is returned in the unit the papers print: accuracies, δ>1.25 ("bad pixels"), WHDR,
  pixAcc and mIoU in **percent**; AbsRel as a ratio; RMSE in the depth unit of the target.
* Depth metrics are **averaged per image** (the MiDaS gists and BTS ``eval_with_pngs.py`` compute each
  metric per image, then take the mean over images). Tensors are ``(B, H, W)`` (any trailing shape
  works: everything after the batch dimension is one image) or a single ``(H, W)`` image.
  ``reduction="none"`` returns the per-image values ``(B,)`` so that a batched evaluation can
  concatenate them and average over the whole set; images without a valid pixel give NaN there and
  are skipped by ``reduction="mean"``.
* Segmentation metrics follow PyTorch-Encoding (dpt.md §6.2): intersection and union are
  **accumulated over the whole evaluated set**, not per image. :func:`mean_iou` pools the pixels of
  the tensors it is given; :class:`SegmentationMeter` accumulates across batches.
"""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["mean", "none"]

# A predicted depth ratio above this counts as a "bad pixel" (δ > 1.25 in the papers' tables).
DELTA_THRESHOLD = 1.25


def _topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if labels.ndim == 2:  # soft (Mixup / label-smoothed) targets: the class with the largest weight
        labels = labels.argmax(dim=1)
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}")
    if k > logits.shape[1]:
        raise ValueError(f"top-{k} needs at least {k} classes, logits have {logits.shape[1]}")
    topk = logits.topk(k, dim=1).indices
    correct = (topk == labels.unsqueeze(1)).any(dim=1)
    return correct.float().mean() * 100


def top1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent. ``labels`` are class indices ``(B,)`` or soft targets ``(B, C)``."""
    return _topk_accuracy(logits, labels, 1)


def top5(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-5 accuracy in percent. ``labels`` are class indices ``(B,)`` or soft targets ``(B, C)``."""
    return _topk_accuracy(logits, labels, 5)


def _as_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flatten each image to one row: (H, W) -> (1, H*W); (B, ...) -> (B, prod(...))."""
    shape = tensors[0].shape
    for t in tensors[1:]:
        if t.shape != shape:
            raise ValueError(f"shapes differ: {tuple(shape)} vs {tuple(t.shape)}")
    if len(shape) < 2:
        raise ValueError(f"expected an image (H, W) or a batch (B, H, W), got shape {tuple(shape)}")
    if len(shape) == 2:
        return tuple(t.reshape(1, -1) for t in tensors)
    return tuple(t.reshape(shape[0], -1) for t in tensors)


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image least-squares scale and shift of ``pred`` onto ``target`` over ``mask``.

    Solves min_{s,t} Σ mask·(s·pred + t − target)² with the closed-form 2×2 normal equations, as the
    MiDaS evaluation gists do; an image whose system is singular (det ≤ 0, e.g. fewer than two
    distinct valid values) gets s = t = 0. Returns s·pred + t on every pixel, shaped like ``pred``.
    Sums run in float64 so that large images do not lose the small determinant to rounding.
    """
    p, y, m = _as_batch(pred, target, mask)
    p64, m64 = p.double(), m.double()
    y64 = torch.where(m.bool(), y.double(), torch.zeros_like(p64))  # off-mask targets may be inf/NaN
    a00 = (m64 * p64 * p64).sum(1)
    a01 = (m64 * p64).sum(1)
    a11 = m64.sum(1)
    b0 = (m64 * p64 * y64).sum(1)
    b1 = (m64 * y64).sum(1)
    det = a00 * a11 - a01 * a01
    valid = det > 0
    safe_det = torch.where(valid, det, torch.ones_like(det))
    scale = torch.where(valid, (a11 * b0 - a01 * b1) / safe_det, torch.zeros_like(det))
    shift = torch.where(valid, (a00 * b1 - a01 * b0) / safe_det, torch.zeros_like(det))
    aligned = scale.unsqueeze(1) * p64 + shift.unsqueeze(1)
    return aligned.to(pred.dtype).reshape(pred.shape)


def _per_image_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over each row's valid pixels; NaN for a row without any."""
    m = mask.bool()
    total = torch.where(m, values, torch.zeros_like(values)).sum(1)
    count = m.sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _reduce(per_image: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return per_image
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}; valid: 'mean', 'none'")
    if torch.isnan(per_image).all():
        raise ValueError("no image has a valid pixel: the mask is empty everywhere")
    return per_image.nanmean()


def abs_rel(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Absolute relative error: per image, mean over valid pixels of |d − d*| / d*; mean over images."""
    d, gt, m = _as_batch(pred.float(), target.float(), mask)
    safe_gt = torch.where(m.bool(), gt, torch.ones_like(gt))
    return _reduce(_per_image_mean((d - gt).abs() / safe_gt, m), reduction)


def delta_error(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Percent of valid pixels with max(d/d*, d*/d) > 1.25 ("bad pixels", lower is better).

    This is 100 − δ1 accuracy; the MiDaS/DPT zero-shot table prints it in this form. Per image, then
    the mean over images.
    """
    d, gt, m = _as_batch(pred.float(), target.float(), mask)
    ratio = torch.maximum(d / gt, gt / d)  # d = 0 gives inf: a bad pixel, as in the gists
    bad = (ratio > DELTA_THRESHOLD).float() * 100
    return _reduce(_per_image_mean(bad, m), reduction)


def rmse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Root mean squared error: per image sqrt(mean over valid pixels of (d − d*)²); mean over images."""
    d, gt, m = _as_batch(pred.float(), target.float(), mask)
    squared = torch.where(m.bool(), (d - gt) ** 2, torch.zeros_like(d))
    return _reduce(_per_image_mean(squared, m).sqrt(), reduction)


def evaluate_zero_shot(
    pred_inverse_depth: torch.Tensor,
    gt_depth: torch.Tensor,
    mask: torch.Tensor,
    depth_cap: float | None,
    reduction: Reduction = "mean",
) -> dict[str, torch.Tensor]:
    """The MiDaS zero-shot protocol (dpt.md §6.1) on predictions already resized to the GT size.

    1. target disparity = 1 / gt_depth on the valid pixels;
    2. align the predicted inverse depth to it per image (:func:`align_scale_shift`);
    3. clamp the aligned disparity below at 1 / depth_cap (NYU 10 m, KITTI 80 m) and invert it; with
       ``depth_cap=None`` at each image's farthest valid GT depth instead, for ground truth in no fixed
       unit (DPT's ablation mix: relative disparities, and BlendedMVS's per-scene scale);
    4. AbsRel, δ>1.25 (percent) and RMSE of that depth against gt_depth over ``mask``.

    ``mask`` should already exclude invalid depth (e.g. NYU: (d > 0) & (d < 10); KITTI: d ≠ 0).
    Returns ``{"abs_rel", "delta_error", "rmse"}``, means over images (or per image with
    ``reduction="none"``).
    """
    if depth_cap is not None and depth_cap <= 0:
        raise ValueError(f"depth_cap must be positive or None, got {depth_cap}")
    valid = mask.bool()
    if (gt_depth[valid] <= 0).any():
        raise ValueError("mask includes pixels with gt_depth <= 0; exclude them from the mask")
    gt_disparity = torch.where(valid, 1.0 / gt_depth.double(), torch.zeros_like(gt_depth, dtype=torch.double))
    aligned = align_scale_shift(pred_inverse_depth.double(), gt_disparity, valid)
    if depth_cap is None:  # per image: the smallest valid GT disparity
        depth = 1.0 / torch.maximum(aligned, gt_disparity.masked_fill(~valid, torch.inf).amin((-2, -1), True))
    else:
        depth = 1.0 / aligned.clamp(min=1.0 / depth_cap)
    return {
        "abs_rel": abs_rel(depth, gt_depth, valid, reduction),
        "delta_error": delta_error(depth, gt_depth, valid, reduction),
        "rmse": rmse(depth, gt_depth, valid, reduction),
    }


def whdr(
    pred: torch.Tensor,
    pairs: torch.Tensor,
    *,
    pred_is_inverse_depth: bool = False,
    equal_ratio: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Weighted Human Disagreement Rate (DIW) in percent, all annotator weights equal to one.

    ``pairs`` holds integer rows ``(y1, x1, y2, x2, ordinal)`` with ``ordinal`` in {-1, 0, +1}:
    ``-1`` means point 1 is **closer** than point 2 (the DIW annotation), ``+1`` farther, ``0`` equal.
    Shapes: ``pred (H, W)`` with ``pairs (N, 5)``, or ``pred (B, H, W)`` with ``pairs (B, N, 5)``.

    ``pred`` is depth (larger = farther) unless ``pred_is_inverse_depth``. The predicted relation is
    −1 when d1 / d2 < 1 / (1 + equal_ratio), +1 when d1 / d2 > 1 + equal_ratio, else 0; with the
    default 0 it is the sign of d1 − d2 (DIW has no "equal" labels). The rate pools all pairs;
    ``reduction="none"`` gives 100 (disagrees) or 0 per pair.
    """
    if pairs.shape[-1] != 5:
        raise ValueError(f"pairs must end in 5 columns (y1, x1, y2, x2, ordinal), got {tuple(pairs.shape)}")
    if pred.ndim == 2 and pairs.ndim == 2:
        pred, pairs = pred.unsqueeze(0), pairs.unsqueeze(0)
    elif not (pred.ndim == 3 and pairs.ndim == 3 and pred.shape[0] == pairs.shape[0]):
        raise ValueError(
            f"expected pred (H, W) with pairs (N, 5) or pred (B, H, W) with pairs (B, N, 5); "
            f"got {tuple(pred.shape)} and {tuple(pairs.shape)}"
        )
    pairs = pairs.long()
    ordinal = pairs[..., 4]
    if not ((ordinal >= -1) & (ordinal <= 1)).all():
        raise ValueError("ordinal labels must be in {-1, 0, +1}")
    flat = pred.reshape(pred.shape[0], -1).double()
    width = pred.shape[-1]
    d1 = flat.gather(1, pairs[..., 0] * width + pairs[..., 1])
    d2 = flat.gather(1, pairs[..., 2] * width + pairs[..., 3])
    if pred_is_inverse_depth:
        d1, d2 = d2, d1  # larger inverse depth = closer: swapping the pair restores the depth order
    predicted = torch.zeros_like(ordinal)
    predicted[d1 > d2 * (1 + equal_ratio)] = 1
    predicted[d1 * (1 + equal_ratio) < d2] = -1
    disagree = (predicted != ordinal).float() * 100
    if reduction == "none":
        return disagree
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}; valid: 'mean', 'none'")
    return disagree.mean()


class SegmentationMeter:
    """Accumulates a confusion matrix over batches; pixAcc and mIoU in percent (PyTorch-Encoding).

    pixAcc = Σ correct labelled pixels / Σ labelled pixels. IoU_c = Σ intersection_c / Σ union_c over
    everything seen; mIoU is the mean over classes with a non-empty union. On ADE20K val every class
    occurs, so this equals PyTorch-Encoding's mean over all 150; on a small proxy subset an absent
    class would count as 0 there, which measures the subset rather than the model.
    Pixels whose target is ``ignore_index`` are excluded from every count.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # [target, predicted]

    def update(self, pred_labels: torch.Tensor, target_labels: torch.Tensor) -> None:
        if pred_labels.shape != target_labels.shape:
            shapes = f"{tuple(pred_labels.shape)} vs {tuple(target_labels.shape)}"
            raise ValueError(f"pred_labels and target_labels shapes differ: {shapes}")
        labelled = target_labels != self.ignore_index
        target = target_labels[labelled].long()  # counted on the input's device; only C² counts move
        pred = pred_labels[labelled].long()
        for name, labels in (("target", target), ("predicted", pred)):
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{name} labels must be in [0, {self.num_classes}) or the ignore index "
                    f"{self.ignore_index}; got values in [{int(labels.min())}, {int(labels.max())}]"
                )
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes).cpu()

    def iou(self) -> torch.Tensor:
        """Per-class IoU in percent; NaN for a class absent from both prediction and target."""
        intersection = self.confusion.diag().double()
        union = self.confusion.sum(0).double() + self.confusion.sum(1).double() - intersection
        return torch.where(union > 0, intersection / union.clamp(min=1) * 100, torch.nan)

    def compute(self) -> dict[str, float]:
        labelled = int(self.confusion.sum())
        if labelled == 0:
            raise ValueError("no labelled pixel seen: every target pixel was the ignore index")
        return {
            "pixel_accuracy": float(self.confusion.diag().sum()) / labelled * 100,
            "mean_iou": float(self.iou().nanmean()),
        }


def pixel_accuracy(pred_labels: torch.Tensor, target_labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Percent of labelled pixels (target ≠ ignore_index) predicted correctly, pooled over all pixels."""
    labelled = target_labels != ignore_index
    if not labelled.any():
        raise ValueError("no labelled pixel: every target pixel is the ignore index")
    correct = (pred_labels == target_labels) & labelled
    return correct.sum().double() / labelled.sum() * 100


def mean_iou(
    pred_labels: torch.Tensor, target_labels: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """mIoU in percent with intersection and union pooled over all given pixels (see SegmentationMeter)."""
    meter = SegmentationMeter(num_classes, ignore_index)
    meter.update(pred_labels, target_labels)
    if int(meter.confusion.sum()) == 0:
        raise ValueError("no labelled pixel: every target pixel is the ignore index")
    return meter.iou().nanmean()
