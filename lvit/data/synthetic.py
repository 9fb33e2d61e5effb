"""Procedural datasets shipped as code: ``LocalShapes`` (classification), ``Scenes`` (depth, segmentation).

``LocalShapes``: the class of an image is set by *local structure* only, the outline / junction type of one
foreground shape (circle, square, triangle, star, cross, T, L, ring) crossed with the texture inside it
(solid, stripes, checker, dots, rings, grid, waves, spokes): 8 x 8 = 64 classes. Everything global is
nuisance: position, scale, anisotropic stretch, rotation, both texture colours, texture period and angle, a
gradient background carrying a low-contrast texture of its own, and clutter behind and in front of the
shape. It is the regime in which the LocalViT paper argues a ViT needs locality.

Images are rendered by signed distances over a coordinate grid, in float32, for a whole batch at once
(``generate``), on CPU or GPU. Parameters come from per-sample CPU generators (see ``lvit.data.seeding``),
so they are identical bytes everywhere; pixels are bitwise identical across CPU runs, batch sizes and
worker counts, and agree between CPU and CUDA to float32 rounding of ``sin``/``atan2`` (about 1e-6).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from lvit.data.scenes import DOMAINS, SCENE_CLASSES, Scenes
from lvit.data.seeding import (
    UniformStream,
    as_index_tensor,
    check_split,
    image_hw,
    pixel_grid,
    sample_uniforms,
)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "tee", "ell", "ring")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots", "rings", "grid", "waves", "spokes")
NUM_SHAPE_CLASSES = len(SHAPES) * len(TEXTURES)
CLUTTER_BEHIND = 4
CLUTTER_FRONT = 2
_UNIFORMS_PER_SAMPLE = 96


def class_name(label: int) -> str:
    return f"{SHAPES[label // len(TEXTURES)]}/{TEXTURES[label % len(TEXTURES)]}"


# ----------------------------------------------------------------------------------------------------------
# Signed distances in an object's local frame (radius ~1). Negative inside.


def _box(x: torch.Tensor, y: torch.Tensor, half_w: float, half_h: float) -> torch.Tensor:
    qx, qy = x.abs() - half_w, y.abs() - half_h
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _polar_polygon(x: torch.Tensor, y: torch.Tensor, sides: int, inner: float | None = None) -> torch.Tensor:
    """Regular polygon (or star when ``inner`` is given) as radius minus boundary radius along the ray."""
    radius = torch.sqrt(x * x + y * y)
    angle = torch.atan2(y, x)
    sector = 2 * math.pi / sides
    local = torch.remainder(angle, sector) - sector / 2  # angle from the sector's mid-line
    if inner is None:
        boundary = math.cos(math.pi / sides) / torch.cos(local)
    else:  # star: straight edges from outer tip (local=0) to inner notch (local=+-sector/2)
        frac = local.abs() / (sector / 2)
        boundary = 1.0 + (inner - 1.0) * frac
    return radius - boundary


def _shape_sdf(kind: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == 0:  # circle
        return torch.sqrt(x * x + y * y) - 0.95
    if kind == 1:  # square: four L-corners
        return _box(x, y, 0.75, 0.75)
    if kind == 2:  # triangle: three acute corners
        return _polar_polygon(x, y, 3) * 0.5
    if kind == 3:  # five-pointed star: acute tips and reflex notches
        return _polar_polygon(x, y, 5, inner=0.45) * 0.5
    if kind == 4:  # cross: X-junctions
        return torch.minimum(_box(x, y, 0.95, 0.28), _box(x, y, 0.28, 0.95))
    if kind == 5:  # tee: one T-junction
        return torch.minimum(_box(x, y - 0.6, 0.9, 0.26), _box(x, y + 0.2, 0.26, 0.7))
    if kind == 6:  # ell: one L-junction
        return torch.minimum(_box(x + 0.5, y, 0.26, 0.9), _box(x, y + 0.64, 0.76, 0.26))
    if kind == 7:  # ring: curved edges both sides
        return (torch.sqrt(x * x + y * y) - 0.68).abs() - 0.27
    raise ValueError(f"unknown shape kind {kind}")


def _texture(kind: int, u: torch.Tensor, v: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """Texture mix weight in [0, 1]; ``u, v`` in the texture frame, ``period`` broadcastable."""
    fu, fv = 2 * math.pi * u / period, 2 * math.pi * v / period
    if kind == 0:
        signed = torch.full_like(u, -1.0)
    elif kind == 1:
        signed = torch.sin(fu)
    elif kind == 2:
        signed = torch.sin(fu / 2) * torch.sin(fv / 2) * 2
    elif kind == 3:
        signed = torch.cos(fu) + torch.cos(fv) - 1.0
    elif kind == 4:
        signed = torch.sin(torch.sqrt(u * u + v * v + 1e-12) * 2 * math.pi / period)
    elif kind == 5:
        signed = (torch.maximum(torch.cos(fu).abs(), torch.cos(fv).abs()) - 0.85) * 6
    elif kind == 6:
        signed = torch.sin(fu + 1.8 * torch.sin(fv / 1.5))
    elif kind == 7:
        signed = torch.sin(7 * torch.atan2(v, u))
    else:
        raise ValueError(f"unknown texture kind {kind}")
    return (0.5 + 1.5 * signed).clamp(0, 1)


def _per_kind(kinds: torch.Tensor, count: int, fn, *grids: torch.Tensor) -> torch.Tensor:
    """Evaluate ``fn(kind, *grids[rows])`` only on the rows whose kind matches, and scatter back."""
    out = torch.empty_like(grids[0])
    for kind in range(count):
        rows = (kinds == kind).nonzero(as_tuple=True)[0]
        if rows.numel():
            out[rows] = fn(kind, *(g[rows] for g in grids))
    return out


def _rotate(x: torch.Tensor, y: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c, s = torch.cos(angle), torch.sin(angle)
    return c * x + s * y, -s * x + c * y


def _bcast(t: torch.Tensor) -> torch.Tensor:
    """``(B,)`` or ``(B, k)`` parameter to broadcast over ``(B, [k,] H, W)`` grids."""
    return t[..., None, None]


def _coverage(sdf: torch.Tensor, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage of ``sdf < 0`` (sdf in image units, ``pixel`` = one pixel in image units)."""
    return (0.5 - sdf / pixel).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------
# Parameters (vectorised over the batch, from the per-sample uniforms)


def _contrasting(first: torch.Tensor, second: torch.Tensor, minimum: float) -> torch.Tensor:
    """Push ``second`` away from ``first`` so their RGB distance is at least ``minimum``."""
    delta = second - first
    norm = delta.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return (first + delta / norm * norm.clamp(min=minimum)).clamp(0, 1)


def shape_parameters(
    uniforms: torch.Tensor, labels: torch.Tensor, nuisance: float = 1.0
) -> dict[str, torch.Tensor]:
    """All rendering parameters of a batch, from ``(B, _UNIFORMS_PER_SAMPLE)`` uniforms.

    ``nuisance`` in [0, 1] scales the background texture's contrast and the chance of each clutter item; the
    same uniforms are drawn at every value, so only those two change (1: the full set, 0: neither).
    """
    u = UniformStream(uniforms)
    p: dict[str, torch.Tensor] = {
        "shape": labels // len(TEXTURES),
        "texture": labels % len(TEXTURES),
        "center": u.range(-0.42, 0.42, 2),
        "radius": u.range(0.32, 0.6, 1)[:, 0],
        "stretch": u.range(-0.25, 0.25, 1)[:, 0].exp(),
        "angle": u.range(0, 2 * math.pi, 1)[:, 0],
        "tex_angle": u.range(0, 2 * math.pi, 1)[:, 0],
        "tex_period": u.range(0.28, 0.5, 1)[:, 0],
        "tex_phase": u.range(0, 1, 2),
        "bg_angle": u.range(0, 2 * math.pi, 1)[:, 0],
        "bg_texture": u.integers(len(TEXTURES), 1)[:, 0],
        "bg_period": u.range(0.08, 0.3, 1)[:, 0],
        "bg_contrast": u.range(0.0, 0.3, 1)[:, 0] * nuisance,
        "bg_tex_angle": u.range(0, 2 * math.pi, 1)[:, 0],
    }
    color_a = u.take(3)
    p["color_a"] = color_a
    p["color_b"] = _contrasting(color_a, u.take(3), 0.45)
    bg_a = u.take(3)
    p["bg_a"], p["bg_b"] = bg_a, _contrasting(bg_a, u.take(3), 0.1)
    n_clutter = CLUTTER_BEHIND + CLUTTER_FRONT
    p["clutter_on"] = u.take(n_clutter) < 0.6 * nuisance
    p["clutter_kind"] = u.integers(3, n_clutter)
    p["clutter_center"] = u.range(-1, 1, 2 * n_clutter).reshape(-1, n_clutter, 2)
    size = u.range(0.05, 0.22, n_clutter)
    size[:, CLUTTER_BEHIND:] *= 0.6  # occluders in front stay small: they hide, not replace, the shape
    p["clutter_size"] = size
    p["clutter_angle"] = u.range(0, math.pi, n_clutter)
    p["clutter_color"] = u.take(3 * n_clutter).reshape(-1, n_clutter, 3)
    return p


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _over(canvas: torch.Tensor, color: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Composite ``color`` (B,3,H,W or B,3,1,1) with coverage ``alpha`` (B,H,W) over ``canvas`` (B,3,H,W)."""
    return canvas.lerp_(color.expand_as(canvas), alpha[:, None].expand_as(canvas))


def _clutter_sdf(kind: int, x: torch.Tensor, y: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    if kind == 0:  # disc
        return torch.sqrt(x * x + y * y) - size
    if kind == 1:  # square
        return _box(x / size, y / size, 0.8, 0.8) * size
    return _box(x / size, y / size, 1.6, 0.12) * size  # stroke


def render_shapes(p: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
    """``(B, 3, H, W)`` float32 images in [0, 1] from parameters already on the target device."""
    device = p["center"].device
    batch = p["center"].shape[0]
    gy, gx = pixel_grid(height, width, device)
    gx, gy = gx.expand(batch, height, width), gy.expand(batch, height, width)
    pixel = 2.0 / min(height, width)

    # Background: linear colour gradient plus a low-contrast texture of a random kind.
    along, _ = _rotate(gx, gy, _bcast(p["bg_angle"]))
    ramp = ((along + 1.5) / 3).clamp(0, 1)[:, None]
    canvas = _bcast(p["bg_a"]) * (1 - ramp) + _bcast(p["bg_b"]) * ramp
    bu, bv = _rotate(gx, gy, _bcast(p["bg_tex_angle"]))
    bg_tex = _per_kind(p["bg_texture"], len(TEXTURES), _texture, bu, bv, _bcast(p["bg_period"]).expand_as(bu))
    canvas = canvas + (_bcast(p["bg_contrast"]) * (bg_tex - 0.5))[:, None]

    def clutter(first: int, last: int, canvas: torch.Tensor) -> torch.Tensor:
        for k in range(first, last):
            cx, cy = gx - _bcast(p["clutter_center"][:, k, 0]), gy - _bcast(p["clutter_center"][:, k, 1])
            lx, ly = _rotate(cx, cy, _bcast(p["clutter_angle"][:, k]))
            size = _bcast(p["clutter_size"][:, k]).expand_as(lx)
            sdf = _per_kind(p["clutter_kind"][:, k], 3, _clutter_sdf, lx, ly, size)
            alpha = _coverage(sdf, pixel) * _bcast(p["clutter_on"][:, k].float())
            canvas = _over(canvas, _bcast(p["clutter_color"][:, k]), alpha)
        return canvas

    canvas = clutter(0, CLUTTER_BEHIND, canvas)

    # The labelled shape: local frame = translate, rotate, anisotropic scale.
    radius, stretch = _bcast(p["radius"]), _bcast(p["stretch"])
    ox, oy = gx - _bcast(p["center"][:, 0]), gy - _bcast(p["center"][:, 1])
    ox, oy = _rotate(ox, oy, _bcast(p["angle"]))
    lx, ly = ox / (radius * stretch), oy * stretch / radius
    sdf_local = _per_kind(p["shape"], len(SHAPES), _shape_sdf, lx, ly)
    alpha = _coverage(sdf_local * radius * torch.minimum(stretch, 1 / stretch), pixel)
    tu, tv = _rotate(lx, ly, _bcast(p["tex_angle"]))
    tu, tv = tu + _bcast(p["tex_phase"][:, 0]), tv + _bcast(p["tex_phase"][:, 1])
    period = _bcast(p["tex_period"]).expand_as(tu)
    # Spokes and rings are centred on the shape, so they ignore the phase shift.
    tu = torch.where(_bcast((p["texture"] == 4) | (p["texture"] == 7)), lx, tu)
    tv = torch.where(_bcast((p["texture"] == 4) | (p["texture"] == 7)), ly, tv)
    weight = _per_kind(p["texture"], len(TEXTURES), _texture, tu, tv, period)[:, None]
    fill = _bcast(p["color_a"]) * (1 - weight) + _bcast(p["color_b"]) * weight
    canvas = _over(canvas, fill, alpha)

    canvas = clutter(CLUTTER_BEHIND, CLUTTER_BEHIND + CLUTTER_FRONT, canvas)
    return canvas.clamp(0, 1)


class LocalShapes(Dataset):
    """Procedural 64-class classification set; class = (shape outline or junction type, texture).

    ``dataset[i]`` -> ``(image float32 (3, H, W) in [0, 1], label int)``; ``generate(indices, device)``
    renders a whole batch at once (on GPU when given) with the same values. ``nuisance`` < 1 thins the
    background texture and clutter (:func:`shape_parameters`), for calibrating difficulty. Labels are
    balanced exactly: ``label = i % num_classes``; classes ``0..num_classes-1`` are
    ``(SHAPES[c // 8], TEXTURES[c % 8])``.
    """

    namespace = "local_shapes"

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 10_000,
        image_size: int | tuple[int, int] = 64,
        num_classes: int = NUM_SHAPE_CLASSES,
        seed: int = 0,
        nuisance: float = 1.0,
    ) -> None:
        if not 0.0 <= nuisance <= 1.0:
            raise ValueError(f"nuisance must be in [0, 1] (1: full background texture and clutter), "
                             f"got {nuisance}")
        if not 2 <= num_classes <= NUM_SHAPE_CLASSES:
            raise ValueError(f"num_classes must be in [2, {NUM_SHAPE_CLASSES}], got {num_classes}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.split = check_split(split)
        self.num_samples = num_samples
        self.image_size = image_hw(image_size)
        self.num_classes = num_classes
        self.seed = seed
        self.nuisance = float(nuisance)

    def __len__(self) -> int:
        return self.num_samples

    def labels(self, indices: torch.Tensor) -> torch.Tensor:
        return indices % self.num_classes

    def generate(
        self,
        indices: torch.Tensor | list[int],
        device: torch.device | str = "cpu",
        image_size: int | tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, 3, H, W) float32, labels (B,) int64)`` on ``device``."""
        indices = as_index_tensor(indices, self.num_samples)
        height, width = image_hw(image_size) if image_size is not None else self.image_size
        labels = self.labels(indices)
        uniforms = sample_uniforms(indices, _UNIFORMS_PER_SAMPLE, self.seed, self.split, self.namespace)
        params = {k: v.to(device) for k, v in shape_parameters(uniforms, labels, self.nuisance).items()}
        return render_shapes(params, height, width), labels.to(device)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.generate([index])
        return images[0], int(labels[0])

    def __repr__(self) -> str:
        return (
            f"LocalShapes(split={self.split!r}, num_samples={self.num_samples}, "
            f"image_size={self.image_size}, num_classes={self.num_classes}, seed={self.seed}, "
            f"nuisance={self.nuisance})"
        )


__all__ = ["DOMAINS", "SCENE_CLASSES", "SHAPES", "TEXTURES", "LocalShapes", "Scenes", "class_name"]
