"""Per-sample randomness for the procedural datasets.

Sample ``i`` of a split depends only on ``(seed, split, i)``: each sample gets its own CPU
``torch.Generator`` seeded from a stable hash of that triple, and draws a fixed-length vector of uniforms.
Renderers turn those uniforms into scene parameters with vectorised tensor maths, so parameters are the
same bytes on every machine, batch size, worker count and device.
"""

from __future__ import annotations

import hashlib

import torch

SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def sample_seed(seed: int, split: str, index: int, namespace: str) -> int:
    """A 63-bit seed from a stable hash (not Python's salted ``hash``) of the sample's identity."""
    key = f"{namespace}/{seed}/{split}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def sample_uniforms(indices: torch.Tensor, count: int, seed: int, split: str, namespace: str) -> torch.Tensor:
    """``(len(indices), count)`` float32 uniforms in [0, 1) on CPU; row ``k`` depends on ``indices[k]``."""
    rows = []
    generator = torch.Generator()
    for index in indices.tolist():
        generator.manual_seed(sample_seed(seed, split, int(index), namespace))
        rows.append(torch.rand(count, generator=generator))
    return torch.stack(rows) if rows else torch.empty(0, count)


class UniformStream:
    """Hands out consecutive columns of a ``(B, count)`` uniform matrix: each parameter has a fixed slot."""

    def __init__(self, uniforms: torch.Tensor) -> None:
        self.uniforms = uniforms
        self.position = 0

    def take(self, n: int = 1) -> torch.Tensor:
        """The next ``n`` columns, shape ``(B, n)``."""
        if self.position + n > self.uniforms.shape[1]:
            raise RuntimeError(f"uniform budget of {self.uniforms.shape[1]} per sample exhausted")
        cols = self.uniforms[:, self.position : self.position + n]
        self.position += n
        return cols

    def range(self, low: float, high: float, n: int = 1) -> torch.Tensor:
        return low + (high - low) * self.take(n)

    def integers(self, high: int, n: int = 1) -> torch.Tensor:
        """Integers in ``[0, high)``, int64."""
        return (self.take(n) * high).long().clamp_(max=high - 1)


def as_index_tensor(indices: torch.Tensor | list[int] | range, num_samples: int) -> torch.Tensor:
    indices = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long)
    indices = indices.reshape(-1).cpu()
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_samples):
        raise IndexError(
            f"indices must lie in [0, {num_samples}); got min {int(indices.min())}, max {int(indices.max())}"
        )
    return indices


def pixel_grid(height: int, width: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(y, x)``, each ``(H, W)``, scaled so the shorter side spans [-1, 1].

    Pixel centres make a render at 2x resolution average (2x2) onto the 1x render's sample points.
    """
    scale = min(height, width)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2) * (2 / scale)
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2) * (2 / scale)
    return torch.meshgrid(ys, xs, indexing="ij")


def image_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(s) for s in image_size)
    return height, width
