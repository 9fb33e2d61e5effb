"""Batch augmentations that run on the device as a few whole-batch tensor ops.

timm's ``RandomErasing`` loops over the batch in Python and launches several small kernels per image (about a
thousand per step at batch 256), which makes a launch-bound GPU step up to ~2x slower. ``random_erase_batch``
draws the same distribution (``mode="pixel"``, ``max_count=1``) with a fixed number of kernels whatever the
batch size, and never synchronises with the host.

Randomness comes from torch (the global generator of the images' device unless one is given), not from
Python's ``random`` as in timm, so the loop's seeding and its checkpointed torch/CUDA RNG states cover it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["BatchRandomErasing", "random_erase_batch"]


def random_erase_batch(
    images: torch.Tensor,
    probability: float,
    *,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    attempts: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Erase at most one rectangle per image of an ``(N, C, H, W)`` batch, filling it with N(0, 1) noise.

    Same semantics as timm's ``RandomErasing(probability, mode="pixel", max_count=1)``: each image is erased
    with ``probability``; the rectangle's area is uniform in ``[min_area, max_area]`` of the image, its log
    aspect ratio (h / w) uniform in ``(log min_aspect, -log min_aspect)``, h and w rounded to integers; of
    ``attempts`` draws the first with ``h < H`` and ``w < W`` is used (none when all fail); its corner is
    uniform over the positions where it fits. All attempts are drawn at once so there is no per-image loop.

    Returns a new tensor with the input's dtype, shape and memory format; ``images`` is not modified (unlike
    timm, which erases in place). ``generator`` must live on ``images.device``.
    """
    if images.dim() != 4:
        raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(images.shape)}")
    n, _, height, width = images.shape
    device = images.device

    # One draw for the coin, two per attempt (area, aspect) and two for the corner.
    u = torch.rand(n, 3 + 2 * attempts, generator=generator, device=device)
    coin, u_top, u_left = u[:, 0], u[:, 1], u[:, 2]
    u_area, u_aspect = u[:, 3 : 3 + attempts], u[:, 3 + attempts :]
    target_area = (min_area + (max_area - min_area) * u_area) * (height * width)
    log_aspect = math.log(min_aspect)
    aspect = torch.exp(log_aspect + (-2 * log_aspect) * u_aspect)
    # torch.round rounds half to even like Python's round, which timm uses.
    h = torch.round(torch.sqrt(target_area * aspect))
    w = torch.round(torch.sqrt(target_area / aspect))
    valid = (h < height) & (w < width)
    # argmax returns the first maximum, i.e. the first valid attempt (attempt 0 when none is: masked below).
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    erase = (coin < probability) & valid.any(dim=1)

    # Corner uniform over {0, ..., H - h} like random.randint; the clamps guard float rounding of
    # u * (H - h + 1) and keep the unused corner of images with no valid attempt in range.
    top = torch.floor(u_top * (height - h + 1)).clamp(min=0).minimum(height - h)
    left = torch.floor(u_left * (width - w + 1)).clamp(min=0).minimum(width - w)
    rows = torch.arange(height, device=device, dtype=h.dtype)
    cols = torch.arange(width, device=device, dtype=w.dtype)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = (erase[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :])[:, None]

    # Noise for the whole batch costs one kernel and keeps the input's memory format (empty_like); writing the
    # result into it avoids a third full-size buffer.
    noise = torch.empty_like(images).normal_(generator=generator)
    return torch.where(mask, noise, images, out=noise)


class BatchRandomErasing(nn.Module):
    """``random_erase_batch`` as a module: the batch stand-in for timm's pixel-mode ``RandomErasing``."""

    def __init__(
        self, probability: float, min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3
    ) -> None:
        super().__init__()
        self.probability = probability
        self.min_area = min_area
        self.max_area = max_area
        self.min_aspect = min_aspect

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_erase_batch(
            images,
            self.probability,
            min_area=self.min_area,
            max_area=self.max_area,
            min_aspect=self.min_aspect,
            generator=generator,
        )

    def extra_repr(self) -> str:
        return f"p={self.probability}, area=({self.min_area}, {self.max_area}), min_aspect={self.min_aspect}"
