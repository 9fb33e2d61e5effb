"""LocalShapes: determinism, labels, class structure, resolution independence, factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lvit.data import build_dataset, dataset_names
from lvit.data.synthetic import NUM_SHAPE_CLASSES, SHAPES, TEXTURES, LocalShapes, _shape_sdf, class_name


def test_same_seed_same_tensors_across_calls_batches_and_getitem() -> None:
    ds = LocalShapes("train", 200, 24)
    first, labels = ds.generate([5, 17, 123])
    again, _ = LocalShapes("train", 200, 24).generate([5, 17, 123])
    assert torch.equal(first, again)
    alone, alone_label = ds[17]
    assert torch.equal(alone, first[1]) and alone_label == int(labels[1])
    other_batch, _ = ds.generate([123, 0, 17])  # batch composition must not matter
    assert torch.equal(other_batch[2], first[1])


def test_dataloader_workers_do_not_change_samples() -> None:
    ds = LocalShapes("val", 8, 16)
    serial = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=0)])
    parallel = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(serial, parallel)


def test_splits_and_seeds_differ() -> None:
    train, _ = LocalShapes("train", 10, 16).generate(range(10))
    val, _ = LocalShapes("val", 10, 16).generate(range(10))
    reseeded, _ = LocalShapes("train", 10, 16, seed=1).generate(range(10))
    for other in (val, reseeded):
        assert (train - other).abs().flatten(1).amax(1).min() > 0.1  # every sample differs


def test_images_are_float_rgb_in_unit_range() -> None:
    images, _ = LocalShapes("train", 16, (20, 28)).generate(range(16))
    assert images.dtype == torch.float32 and images.shape == (16, 3, 20, 28)
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.1  # not blank


def test_labels_balanced_and_all_classes_reachable() -> None:
    ds = LocalShapes("train", 64 * 3, 8)
    labels = ds.labels(torch.arange(len(ds)))
    assert NUM_SHAPE_CLASSES == len(SHAPES) * len(TEXTURES) >= 50
    assert torch.equal(torch.bincount(labels, minlength=64), torch.full((64,), 3))
    assert torch.equal(
        LocalShapes("train", 50, 8, num_classes=10).labels(torch.arange(50)).unique(), torch.arange(10)
    )
    assert len({class_name(c) for c in range(64)}) == 64
    with pytest.raises(ValueError, match="num_classes"):
        LocalShapes(num_classes=65)


def test_nuisance_thins_background_texture_and_clutter_only() -> None:
    from lvit.data.seeding import sample_uniforms
    from lvit.data.synthetic import _UNIFORMS_PER_SAMPLE, shape_parameters

    indices = torch.arange(256)
    uniforms = sample_uniforms(indices, _UNIFORMS_PER_SAMPLE, 0, "train", LocalShapes.namespace)
    full, none = (shape_parameters(uniforms, indices % 64, n) for n in (1.0, 0.0))
    assert full["clutter_on"].any() and full["bg_contrast"].gt(0).all()
    assert not none["clutter_on"].any() and none["bg_contrast"].eq(0).all()
    # every other parameter is drawn from the same uniforms: the labelled shape is the same shape
    assert all(torch.equal(full[k], none[k]) for k in full if k not in ("clutter_on", "bg_contrast"))

    def total_variation(images: torch.Tensor) -> float:
        return float((images[..., 1:, :] - images[..., :-1, :]).abs().mean())

    plain, _ = LocalShapes("train", 64, 32, nuisance=0.0).generate(range(64))
    busy, _ = LocalShapes("train", 64, 32).generate(range(64))
    assert total_variation(plain) < 0.8 * total_variation(busy)
    with pytest.raises(ValueError, match="nuisance must be in"):
        LocalShapes(nuisance=1.5)


@pytest.mark.parametrize(
    ("shape", "inside", "outside"),
    [
        ("circle", (0.0, 0.0), (0.8, 0.8)),
        ("square", (0.7, 0.7), (0.9, 0.0)),  # corners reach (0.75, 0.75)
        ("triangle", (0.9, 0.0), (-0.9, 0.0)),  # vertex at angle 0, opposite edge at apothem 0.5
        ("cross", (0.8, 0.0), (0.6, 0.6)),
        ("ring", (0.68, 0.0), (0.0, 0.0)),  # the centre is the hole
        ("tee", (0.0, 0.6), (0.6, -0.6)),
        ("ell", (-0.5, 0.5), (0.5, 0.5)),
    ],
)
def test_shape_outlines_contain_hand_picked_points(shape: str, inside: tuple, outside: tuple) -> None:
    kind = SHAPES.index(shape)
    pts = torch.tensor([inside, outside])
    sdf = _shape_sdf(kind, pts[:, 0], pts[:, 1])
    assert sdf[0] < 0 < sdf[1]


def test_label_not_nuisance_sets_the_object() -> None:
    # Same index (so the same nuisance draw) under two class counts: only the label differs.
    ds_a, ds_b = LocalShapes("train", 100, 32, num_classes=64), LocalShapes("train", 100, 32, num_classes=63)
    x_a, y_a = ds_a.generate([70])
    x_b, y_b = ds_b.generate([70])
    assert int(y_a) != int(y_b)
    assert (x_a - x_b).abs().amax() > 0.2


def test_rendering_is_resolution_independent() -> None:
    ds = LocalShapes("train", 20, 32)
    low, _ = ds.generate(range(4))
    high, _ = ds.generate(range(4), image_size=64)
    # 2x2 means of the high-res render land on the low-res pixel centres: same scene, finer sampling.
    assert (F.avg_pool2d(high, 2) - low).abs().mean() < 0.03


def test_build_dataset_reads_recipe_and_rejects_unknown_names() -> None:
    ds = build_dataset(
        "local_shapes", "val", {"image_size": 32, "val_samples": 12, "num_classes": 20, "seed": 3}
    )
    assert isinstance(ds.dataset, LocalShapes) and len(ds) == 12 and ds.num_classes == 20 and ds.seed == 3
    assert ds[0][0].shape == (3, 32, 32)
    # images come out ImageNet-normalised, as DeiT's pipeline feeds real images; labels untouched
    raw_images, raw_labels = LocalShapes("val", 12, 32, num_classes=20, seed=3).generate(range(4))
    images, labels = ds.generate(range(4))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(images, (raw_images - mean[:, None, None]) / std[:, None, None], atol=1e-6)
    assert torch.equal(labels, raw_labels) and torch.allclose(ds[2][0], images[2], atol=1e-6)
    scenes = build_dataset("scenes", "val", {"image_size": 16, "val_samples": 2})
    raw_scene = scenes.dataset.generate([0, 1])
    scene = scenes.generate([0, 1])
    assert torch.allclose(scene["image"], raw_scene["image"] * 2 - 1, atol=1e-6)  # DPT: mean = std = 0.5
    assert torch.equal(scene["depth"], raw_scene["depth"]) and scenes.domains == scenes.dataset.domains
    with pytest.raises(ValueError, match="local_shapes"):
        build_dataset("imagenet-21k", "train", {})
    assert {"local_shapes", "scenes", "imagenet", "nyu", "kitti", "ade20k"} <= set(dataset_names())


def test_preview_cli_renders_the_nuisance_asked_for_and_refuses_out_of_range(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from lvit.cli import main
    from lvit.data.cli import preview_grid

    out = str(tmp_path / "grid.png")
    main(["data", "preview", "--dataset", "local_shapes", "-n", "4", "--image-size", "32", "--nuisance", "0",
          "--out", out])
    written = torch.from_numpy(np.array(Image.open(out))).permute(2, 0, 1)

    def as_png(nuisance: float) -> torch.Tensor:  # save_image's quantisation
        grid = preview_grid("local_shapes", 4, 32, "train", 0, None, nuisance)
        return grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)

    assert torch.equal(written, as_png(0.0)) and not torch.equal(written, as_png(1.0))
    with pytest.raises(SystemExit, match="nuisance must be in"):
        main(["data", "preview", "--dataset", "local_shapes", "--nuisance", "2", "--out", out])
    for n in ("0", "-3"):
        with pytest.raises(SystemExit, match=rf"^lvit data preview: -n .* at least 1, got {n}$"):
            main(["data", "preview", "-n", n, "--out", out])
