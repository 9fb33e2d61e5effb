"""Scenes: analytic depth, shading and shadows, determinism, domains, resolution independence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lvit.data import build_dataset
from lvit.data.scenes import (
    BOX,
    CYLINDER,
    DOMAIN_SPECS,
    DOMAINS,
    PLANE,
    SCENE_CLASSES,
    SPHERE,
    Scenes,
    empty_scene,
    render_scenes,
    slot,
)

SIZE = 33  # odd, so the centre pixel's ray is the optical axis


def _camera_at_origin(tan_half_fov: float = 0.5) -> dict[str, torch.Tensor]:
    """One scene, camera at the origin looking down +z, no primitives yet."""
    p = empty_scene(1)
    p["tan_half_fov"][:] = tan_half_fov
    p["ambient"][:] = 0.3
    return p


def _pixel_rays(tan_half_fov: float = 0.5) -> torch.Tensor:
    """Hand-derived float64 ray directions (x right, y up, z forward = 1) for the SIZE x SIZE grid."""
    centres = (torch.arange(SIZE, dtype=torch.float64) + 0.5 - SIZE / 2) * (2 / SIZE) * tan_half_fov
    y, x = torch.meshgrid(-centres, centres, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], -1)


def _add(p: dict, kind: int, center: list[float], size: list[float], label: str = "box", k: int = 0) -> None:
    s = slot(kind, k)
    p["prim_a"][0, s] = torch.tensor(center)
    p["prim_b"][0, s, : len(size)] = torch.tensor(size)
    p["active"][0, s] = True
    p["label"][0, s] = SCENE_CLASSES.index(label)


def test_fronto_parallel_plane_has_constant_z_depth() -> None:
    p = _camera_at_origin()
    _add(p, PLANE, [0.0, 0.0, -1.0], [-5.0], "wall")  # -z = -5, i.e. z = 5
    out = render_scenes(p, SIZE, SIZE)
    assert out["valid"].all()
    torch.testing.assert_close(out["depth"], torch.full((1, SIZE, SIZE), 5.0), rtol=1e-4, atol=0)
    assert (out["labels"] == SCENE_CLASSES.index("wall")).all()


def test_floor_depth_matches_analytic_value() -> None:
    p = _camera_at_origin()
    _add(p, PLANE, [0.0, 1.0, 0.0], [-1.5], "floor")  # y = -1.5: the camera is 1.5 m above the floor
    depth = render_scenes(p, SIZE, SIZE)["depth"][0].double()
    rays = _pixel_rays()
    below = rays[..., 1] < 0
    expected = 1.5 / -rays[..., 1][below]  # t * dir_y = -1.5 and dir_z = 1, so z-depth = t
    torch.testing.assert_close(depth[below], expected, rtol=1e-4, atol=0)
    assert (depth[~below] == 0).all()  # rays at or above the horizon see sky: invalid, depth 0


def test_sphere_box_and_cylinder_depths_match_analytic_values() -> None:
    rays = _pixel_rays()
    # Sphere centre (0, 0, 4), radius 1: smallest t of |t d - c|^2 = r^2, solved in float64 by hand.
    p = _camera_at_origin()
    _add(p, SPHERE, [0.0, 0.0, 4.0], [1.0], "ball")
    out = render_scenes(p, SIZE, SIZE)
    c = torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)
    a, b = (rays * rays).sum(-1), (rays * c).sum(-1)
    disc = b * b - a * (c @ c - 1.0)
    hit = disc > 1e-6
    expected = (b[hit] - disc[hit].sqrt()) / a[hit]
    assert torch.equal(out["valid"][0], hit)
    torch.testing.assert_close(out["depth"][0].double()[hit], expected, rtol=1e-4, atol=0)
    assert out["depth"][0, SIZE // 2, SIZE // 2] == pytest.approx(3.0, rel=1e-5)

    # Box centred at z = 4 with half-extent 1 (any yaw multiple of 90 deg): front face at z = 3.
    p = _camera_at_origin()
    _add(p, BOX, [0.0, 0.0, 4.0], [1.0, 1.0, 1.0])
    p["prim_yaw"][0, slot(BOX, 0)] = math.pi / 2
    out = render_scenes(p, SIZE, SIZE)
    on_face = (rays[..., 0].abs() * 3 < 0.99) & (rays[..., 1].abs() * 3 < 0.99)
    torch.testing.assert_close(
        out["depth"][0][on_face], torch.full((int(on_face.sum()),), 3.0), rtol=1e-4, atol=0
    )

    # Vertical cylinder axis through (0, *, 5), radius 1: on the centre row the near side is at
    # x^2 + (z - 5)^2 = 1 with x = dx * z, so z solves (dx^2 + 1) z^2 - 10 z + 24 = 0.
    p = _camera_at_origin()
    _add(p, CYLINDER, [0.0, 0.0, 5.0], [1.0, 2.0], "cylinder")
    row = render_scenes(p, SIZE, SIZE)["depth"][0, SIZE // 2].double()
    dx = rays[SIZE // 2, :, 0]
    qa = dx * dx + 1
    disc = 25 - 24 * qa
    hit = disc > 1e-6
    torch.testing.assert_close(row[hit], (5 - disc[hit].sqrt()) / qa[hit], rtol=1e-4, atol=0)


def test_lambert_shading_and_shadow() -> None:
    p = _camera_at_origin()
    _add(p, PLANE, [0.0, 1.0, 0.0], [-1.0], "floor")
    p["color_a"][0, slot(PLANE, 0)] = torch.tensor([0.8, 0.8, 0.8])
    p["light_pos"][0] = torch.tensor([0.0, 1e4, 4.0])  # effectively a sun straight above
    lit = render_scenes(p, SIZE, SIZE)
    # Floor normal (0,1,0) faces the overhead light: brightness = albedo * (ambient + (1 - ambient) * 1).
    row = SIZE - 3
    assert lit["image"][0, 0, row, SIZE // 2] == pytest.approx(0.8, abs=1e-3)
    # A ball above that floor point casts a shadow: ambient only.
    hit_z = 1.0 / -float(_pixel_rays()[row, SIZE // 2, 1])
    _add(p, SPHERE, [0.0, 0.0, hit_z], [0.3], "ball")
    shadowed = render_scenes(p, SIZE, SIZE)
    assert shadowed["image"][0, 0, row, SIZE // 2] == pytest.approx(0.8 * 0.3, abs=1e-3)


def test_same_seed_same_scene_and_getitem_matches_generate() -> None:
    ds = Scenes("train", 30, 24)
    batch = ds.generate([2, 11])
    again = Scenes("train", 30, 24).generate([2, 11])
    single = ds[11]
    for key in ("image", "depth", "valid", "labels"):
        assert torch.equal(batch[key], again[key])
        assert torch.equal(batch[key][1], single[key])
    assert single["domain"] == int(batch["domain"][1])
    other = Scenes("val", 30, 24).generate([2, 11])
    assert not torch.equal(batch["depth"], other["depth"])


def test_dataloader_workers_do_not_change_scenes() -> None:
    ds = Scenes("val", 4, 16)
    serial = [b["depth"] for b in DataLoader(ds, batch_size=2, num_workers=0)]
    parallel = [b["depth"] for b in DataLoader(ds, batch_size=2, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_domains_have_declared_and_distinct_depth_ranges() -> None:
    medians = {}
    for name in DOMAINS:
        out = Scenes("train", 6, 24, domains=(name,)).generate(range(6))
        depth = out["depth"][out["valid"]]
        spec = DOMAIN_SPECS[name]
        assert depth.min() >= spec.min_depth and depth.max() <= spec.max_depth
        assert (out["domain"] == DOMAINS.index(name)).all()
        medians[name] = float(depth.median())
    assert medians["tabletop"] < 1.5 < medians["indoor"] < 6 < medians["outdoor"]


def test_semantic_labels_cover_many_classes() -> None:
    assert len(SCENE_CLASSES) >= 10
    out = Scenes("train", 9, 24).generate(range(9))
    labels = out["labels"]
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < len(SCENE_CLASSES)
    assert len(labels.unique()) >= 10
    sky = labels == SCENE_CLASSES.index("sky")
    assert sky.any() and not out["valid"][sky].any()  # sky is invalid depth, never a cap


def test_rerendering_at_twice_the_resolution_gives_the_same_scene() -> None:
    ds = Scenes("val", 6, 24)
    low, high = ds.generate(range(6)), ds.generate(range(6), image_size=48)
    # Compare where the 2x2 high-res block is one surface (same label, all valid): no depth edges inside.
    blocks = F.unfold(high["labels"][:, None].float(), 2, stride=2).reshape(6, 4, 24, 24)
    smooth = (blocks == blocks[:, :1]).all(1) & (F.avg_pool2d(high["valid"][:, None].float(), 2)[:, 0] == 1)
    smooth &= low["valid"] & (low["labels"] == blocks[:, 0].long())
    assert smooth.float().mean() > 0.7
    pooled = F.avg_pool2d(high["depth"][:, None], 2)[:, 0]
    rel = ((pooled - low["depth"]).abs() / low["depth"].clamp(min=1e-6))[smooth]
    assert rel.median() < 1e-3 and torch.quantile(rel, 0.95) < 0.02
    assert (high["labels"][:, ::2, ::2] == low["labels"]).float().mean() > 0.85


def test_build_dataset_scenes_per_split_domains() -> None:
    recipe = {
        "image_size": (16, 24),
        "val_samples": 3,
        "train_domains": ("indoor", "outdoor"),
        "val_domains": ("tabletop",),
    }
    val = build_dataset("scenes", "val", recipe)
    assert isinstance(val.dataset, Scenes) and val.domains == ("tabletop",) and len(val) == 3
    assert val[0]["image"].shape == (3, 16, 24)
    assert build_dataset("scenes", "train", recipe).domains == ("indoor", "outdoor")
    with pytest.raises(ValueError, match="indoor"):
        Scenes(domains=("underwater",))


def test_preview_colour_maps_invalid_black_and_near_to_far_ends() -> None:
    import matplotlib

    from lvit.data.cli import colorize_depth, colorize_labels

    depth = torch.tensor([[[1.0, 2.0, 4.0, 0.0]]])
    rgb = colorize_depth(depth, depth > 0)
    turbo = matplotlib.colormaps["turbo"]
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor(turbo(1.0)[:3], dtype=torch.float32))  # nearest
    torch.testing.assert_close(rgb[0, :, 0, 2], torch.tensor(turbo(0.0)[:3], dtype=torch.float32))  # farthest
    assert (rgb[0, :, 0, 3] == 0).all()  # invalid (sky) is black
    labels = colorize_labels(torch.arange(len(SCENE_CLASSES)).reshape(1, 1, -1))
    assert len({tuple(c) for c in labels[0].reshape(3, -1).t().tolist()}) == len(SCENE_CLASSES)
