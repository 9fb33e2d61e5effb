"""The papers' training losses as pure tensor functions.

Depth follows MiDaS/DPT (``dpt.md`` §5.1, the MiDaS loss gist linked from MiDaS #33): both prediction and
target are inverse depths; each image is normalised by its median and mean absolute deviation over valid
pixels, the data term is the 20 %-trimmed mean absolute residual, and a gradient-matching term on the
residual over 4 scales is added with weight 0.5. Segmentation is cross-entropy with an ignore index plus
the auxiliary head's loss (weight 0.2, ``dpt.md`` §5.3).

All functions take ``pred``/``target`` of shape (B, H, W) and a boolean/0-1 ``mask`` of the same shape,
and are written without boolean indexing so that shapes stay static (``torch.compile`` friendly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-6


def normalize_median_mad(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: subtract the median over valid pixels, divide by the mean absolute deviation from it.

    Images without valid pixels come back as zeros (their mask removes them from every loss anyway).
    """
    mask = mask.to(x.dtype)
    flat = x.flatten(1)
    valid = mask.flatten(1) > 0
    median = torch.where(valid, flat, torch.full_like(flat, float("nan"))).nanmedian(dim=1).values
    median = torch.nan_to_num(median, nan=0.0)
    centred = (flat - median[:, None]) * valid
    count = valid.sum(1).clamp(min=1)
    mad = (centred.abs().sum(1) / count).clamp(min=_EPS)
    return (centred / mad[:, None]).view_as(x)


def trimmed_mae(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, trim: float = 0.2
) -> torch.Tensor:
    """Sum over images of the smallest ``(1 - trim)`` share of each image's absolute residuals / (2 Σ mask).

    Trimming is per image, as the MiDaS paper defines it (U_m = 0.8 M per image).
    """
    valid = mask.flatten(1) > 0
    residual = (pred - target).abs().flatten(1)
    # Invalid pixels sort last; each image keeps its floor((1 - trim) * n_valid) smallest residuals.
    residual = torch.where(valid, residual, torch.full_like(residual, float("inf")))
    ordered = residual.sort(dim=1).values
    keep = torch.floor((1.0 - trim) * valid.sum(1, keepdim=True).double())
    rank = torch.arange(ordered.shape[1], device=pred.device)[None, :]
    kept = torch.where(rank < keep, ordered, torch.zeros_like(ordered))
    return kept.sum() / (2 * valid.sum().clamp(min=1))


def gradient_matching(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scales: int = 4
) -> torch.Tensor:
    """Multi-scale gradient matching (Li & Snavely): L1 of the x/y finite differences of the residual.

    Scale k subsamples every 2**k-th pixel; each scale is normalised by its own Σ mask, scales are summed.
    """
    total = pred.new_zeros(())
    for scale in range(scales):
        step = 2**scale
        p, t, m = (a[:, ::step, ::step] for a in (pred, target, mask.to(pred.dtype)))
        diff = (p - t) * m
        grad_x = (diff[:, :, 1:] - diff[:, :, :-1]).abs() * (m[:, :, 1:] * m[:, :, :-1])
        grad_y = (diff[:, 1:, :] - diff[:, :-1, :]).abs() * (m[:, 1:, :] * m[:, :-1, :])
        total = total + (grad_x.sum() + grad_y.sum()) / m.sum().clamp(min=1)
    return total


def ssi_depth_loss(
    pred_inverse_depth: torch.Tensor,
    target_inverse_depth: torch.Tensor,
    mask: torch.Tensor,
    trim: float = 0.2,
    grad_weight: float = 0.5,
    scales: int = 4,
) -> torch.Tensor:
    """MiDaS/DPT scale-and-shift-invariant trimmed loss in inverse depth + ``grad_weight`` × gradient term."""
    pred = normalize_median_mad(pred_inverse_depth, mask)
    target = normalize_median_mad(target_inverse_depth, mask)
    loss = trimmed_mae(pred, target, mask, trim)
    if grad_weight:
        loss = loss + grad_weight * gradient_matching(pred, target, mask, scales)
    return loss


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    aux_logits: torch.Tensor | None = None,
    ignore_index: int = -1,
    aux_weight: float = 0.2,
) -> torch.Tensor:
    """Cross-entropy (ignoring ``ignore_index``) + ``aux_weight`` × the auxiliary head's cross-entropy.

    Logits smaller than the target are upsampled bilinearly to its size first.
    """

    def ce(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != target.shape[-2:]:
            x = F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(x.float(), target, ignore_index=ignore_index)

    loss = ce(logits)
    if aux_logits is not None and aux_weight:
        loss = loss + aux_weight * ce(aux_logits)
    return loss
