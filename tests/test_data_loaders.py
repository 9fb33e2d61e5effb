"""Real-dataset loaders on tiny fixture trees in the published layouts, plus the papers' transforms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader

from lvit.data import build_dataset
from lvit.data.datasets import ADE20K, KITTIDepth, LayoutError, NYUv2, eigen_crop_mask, garg_crop_mask
from lvit.data.transforms import (
    deit_eval_transform,
    deit_train_transform,
    dpt_eval_transform,
    dpt_resize_shape,
    segmentation_train_transform,
)
from lvit.engine.tasks import build_task
from lvit.experiments.recipes import CLASSIFICATION_PROFILES


def _write_rgb(path: Path, height: int, width: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)


# ---- ImageNet


def test_imagenet_imagefolder_with_deit_eval_transform(tmp_path: Path) -> None:
    mean_rgb = tuple(round(m * 255) for m in IMAGENET_DEFAULT_MEAN)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            path = tmp_path / "imagenet" / split / wnid / "a.JPEG"
            path.parent.mkdir(parents=True)
            Image.new("RGB", (40, 30), mean_rgb).save(path, quality=100)
    val = build_dataset("imagenet", "val", {"image_size": 32}, tmp_path)
    assert val.classes == ["n01440764", "n01443537"] and len(val) == 2
    image, label = val[1]
    assert image.shape == (3, 32, 32) and label == 1
    assert image.abs().max() < 0.05  # an image of the ImageNet mean normalises to ~0
    train_image, _ = build_dataset("imagenet", "train", {"image_size": 32}, tmp_path)[0]
    assert train_image.shape == (3, 32, 32)


def test_imagenet_bad_input_names_layout_and_file(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"imagenet/train/<wnid>"):
        build_dataset("imagenet", "train", {}, tmp_path)
    (tmp_path / "imagenet" / "val").mkdir(parents=True)
    with pytest.raises(LayoutError, match="expected layout"):
        build_dataset("imagenet", "val", {}, tmp_path)
    corrupt = tmp_path / "imagenet" / "val" / "n01440764" / "broken.JPEG"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a jpeg")
    with pytest.raises(Exception, match="broken.JPEG"):
        build_dataset("imagenet", "val", {}, tmp_path)[0]


def test_imagenet_refuses_splits_whose_class_folders_differ(tmp_path: Path) -> None:
    # val lacking n01443537 would number n01484850 as 1 (its train index is 2): top-1 against wrong labels.
    train, val = ("n01440764", "n01443537", "n01484850"), ("n01440764", "n01484850", "n01491361")
    for split, wnids in (("train", train), ("val", val)):
        for wnid in wnids:
            _write_rgb(tmp_path / "imagenet" / split / wnid / "a.JPEG", 30, 40)
    for split in ("train", "val"):
        with pytest.raises(LayoutError) as refused:
            build_dataset("imagenet", split, {"image_size": 32}, tmp_path)
        message = str(refused.value)
        assert "only in train: ['n01443537']" in message and "only in val: ['n01491361']" in message


# ---- NYUv2


def _write_nyu(root: Path, n: int = 3) -> None:
    root.mkdir(parents=True)
    # MATLAB v7.3 column-major: h5py sees images (N, 3, W, H), depths (N, W, H).
    images = np.zeros((n, 3, 640, 480), dtype=np.uint8)
    depths = np.full((n, 640, 480), 2.0, dtype=np.float32)
    labels = np.zeros((n, 640, 480), dtype=np.uint16)
    images[0, 0, 20, 10] = 255  # red at (row 10, col 20) of image 0
    depths[0, 20, 10] = 7.5
    depths[0, 300, 200] = 12.0  # beyond the 10 m cap
    labels[0, 20, 10] = 5
    depths[2] = 3.0
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"], f["rawDepths"], f["depths"], f["labels"] = images, depths, depths, labels
    savemat(root / "splits.mat", {"trainNdxs": np.array([[2]]), "testNdxs": np.array([[1], [3]])})


def test_nyu_labelled_mat_split_and_eigen_crop(tmp_path: Path) -> None:
    _write_nyu(tmp_path / "nyu")
    test = NYUv2(tmp_path, "test")
    assert len(test) == 2 and len(NYUv2(tmp_path, "train")) == 1
    first = test[0]  # testNdxs 1 (1-based) = image 0
    assert first["image"].shape == (3, 480, 640) and first["depth"].shape == (480, 640)
    assert first["image"][0, 10, 20] == 1.0 and first["image"][0, 20, 10] == 0.0
    assert first["depth"][10, 20] == 7.5 and first["labels"][10, 20] == 5
    assert not first["valid"][10, 20]  # outside the Eigen crop (rows 45:471, cols 41:601)
    assert first["valid"][100, 100] and not first["valid"][200, 300]  # 12 m > 10 m cap
    assert eigen_crop_mask(480, 640).sum() == (471 - 45) * (601 - 41)
    assert float(test[1]["depth"][100, 100]) == 3.0  # testNdxs 3 = image 2


def test_nyu_bad_input(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="nyu_depth_v2_labeled.mat"):
        NYUv2(tmp_path)
    (tmp_path / "nyu").mkdir()
    (tmp_path / "nyu" / "nyu_depth_v2_labeled.mat").write_bytes(b"garbage")
    with pytest.raises(LayoutError, match="splits.mat"):
        NYUv2(tmp_path)
    savemat(tmp_path / "nyu" / "splits.mat", {"trainNdxs": np.array([[1]]), "testNdxs": np.array([[1]])})
    with pytest.raises(RuntimeError, match="nyu_depth_v2_labeled.mat"):
        NYUv2(tmp_path)[0]


# ---- KITTI


def _write_kitti(root: Path) -> tuple[str, str]:
    rgb = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    gt = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png"
    _write_rgb(root / "raw" / rgb, 375, 1242)
    depth = np.zeros((375, 1242), dtype=np.uint16)
    depth[300, 600] = 20 * 256  # 20 m, inside both crops
    depth[30, 600] = 10 * 256  # cut by the KB crop (top 23 rows) -> row 7 after crop, outside Garg
    depth[200, 13] = 5 * 256  # kept by KB crop (cols 13..1228) but outside the Garg crop
    (root / "depth" / "val" / gt).parent.mkdir(parents=True)
    Image.fromarray(depth).save(root / "depth" / "val" / gt)
    (root / "splits").mkdir()
    missing = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000070.png"
    (root / "splits" / "eigen_test_files_with_gt.txt").write_text(
        f"{rgb} {gt} 721.5377\n{missing} None 721.5377\n"
    )
    return rgb, gt


def test_kitti_eigen_list_sparse_png_and_crops(tmp_path: Path) -> None:
    _write_kitti(tmp_path / "kitti")
    ds = KITTIDepth(tmp_path, "test")
    assert len(ds) == 1  # the None line has no ground truth and is skipped
    sample = ds[0]
    assert sample["image"].shape == (3, 352, 1216) and sample["depth"].shape == (352, 1216)
    top, left = 375 - 352, (1242 - 1216) // 2
    assert sample["depth"][300 - top, 600 - left] == 20.0 and sample["valid"][300 - top, 600 - left]
    assert sample["depth"][200 - top, 0] == 5.0 and not sample["valid"][200 - top, 0]  # Garg crop
    assert not sample["valid"][30 - top, 600 - left]
    assert sample["valid"].sum() == 1 and sample["focal"] == pytest.approx(721.5377)
    mask = garg_crop_mask(352, 1216)
    assert mask[int(0.40810811 * 352), int(0.03594771 * 1216)] and not mask[0, 0]


def test_kitti_bad_input(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="eigen_test_files_with_gt.txt"):
        KITTIDepth(tmp_path)
    rgb, gt = _write_kitti(tmp_path / "kitti")
    (tmp_path / "kitti" / "depth" / "val" / gt).unlink()
    with pytest.raises(FileNotFoundError, match="0000000069.png"):
        KITTIDepth(tmp_path)[0]
    (tmp_path / "kitti" / "raw" / rgb).write_bytes(b"corrupt")
    with pytest.raises(RuntimeError, match="0000000069.png"):
        KITTIDepth(tmp_path)[0]


# ---- ADE20K


def _write_ade(root: Path) -> None:
    for split, folder in (("train", "training"), ("val", "validation")):
        name = f"ADE_{split}_00000001"
        _write_rgb(root / "images" / folder / f"{name}.jpg", 8, 12)
        annotation = np.zeros((8, 12), dtype=np.uint8)
        annotation[0, 1], annotation[0, 2] = 1, 150
        (root / "annotations" / folder).mkdir(parents=True)
        Image.fromarray(annotation).save(root / "annotations" / folder / f"{name}.png")


def test_ade20k_label_zero_is_ignore_and_classes_shift_down(tmp_path: Path) -> None:
    _write_ade(tmp_path / "ADEChallengeData2016")
    sample = ADE20K(tmp_path, "val")[0]
    labels = sample["labels"]
    assert labels.shape == (8, 12) and sample["image"].shape == (3, 8, 12)
    assert labels[0, 0] == -1 and labels[0, 1] == 0 and labels[0, 2] == 149
    train = build_dataset("ade20k", "train", {"image_size": 16}, tmp_path)[0]
    assert train["image"].shape == (3, 16, 16) and train["labels"].shape == (16, 16)
    assert set(train["labels"].unique().tolist()) <= {-1, 0, 149}


def test_ade20k_val_of_mixed_sizes_batches_normalised_as_training(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    _write_ade(root)  # one 8 x 12 image per split
    for name, (height, width) in {"ADE_val_00000002": (20, 10), "ADE_val_00000003": (16, 16)}.items():
        _write_rgb(root / "images" / "validation" / f"{name}.jpg", height, width)
        annotation = np.zeros((height, width), dtype=np.uint8)
        annotation[:, width // 2 :] = 7  # right half class 7 (-> 6), left half "other" (-> ignore)
        Image.fromarray(annotation).save(root / "annotations" / "validation" / f"{name}.png")
    recipe = {"image_size": 16}
    val = build_dataset("ade20k", "val", recipe, tmp_path)
    batch = next(iter(DataLoader(val, batch_size=3)))  # raised "stack expects each tensor to be equal size"
    assert batch["image"].shape == (3, 3, 16, 16) and batch["labels"].shape == (3, 16, 16)
    gray = (128 / 255 - 0.5) / 0.5  # _write_rgb's value, normalised with DPT's mean = std = 0.5
    torch.testing.assert_close(batch["image"], torch.full_like(batch["image"], gray), atol=0.02, rtol=0)
    train = build_dataset("ade20k", "train", recipe, tmp_path)[0]
    inside = train["labels"] != -1  # training pads with the ignore label; the image holds the same gray
    torch.testing.assert_close(train["image"][:, inside], torch.full_like(train["image"][:, inside], gray),
                               atol=0.02, rtol=0)  # fmt: skip
    for labels in batch["labels"][1:]:  # nearest labels; 20 x 10 -> 32 x 16 -> centre 16 x 16 crop
        assert (labels[:, :8] == -1).all() and (labels[:, 8:] == 6).all()
    assert torch.equal(val[1]["labels"], batch["labels"][1])  # deterministic


def test_nyu_and_kitti_splits_are_normalised_as_dpt(tmp_path: Path) -> None:
    _write_nyu(tmp_path / "nyu")
    _write_kitti(tmp_path / "kitti")
    (tmp_path / "kitti" / "splits" / "eigen_train_files_with_gt.txt").write_text(
        (tmp_path / "kitti" / "splits" / "eigen_test_files_with_gt.txt").read_text()
    )
    for split in ("train", "val"):
        nyu = build_dataset("nyu", split, {}, tmp_path)[0]["image"]  # black, one red pixel in image 0
        assert nyu.min() == -1.0 and nyu.shape == (3, 480, 640)
        kitti = build_dataset("kitti", split, {}, tmp_path)[0]["image"]
        torch.testing.assert_close(kitti, torch.full_like(kitti, (128 / 255 - 0.5) / 0.5))
    assert build_dataset("nyu", "val", {}, tmp_path)[0]["image"][0, 10, 20] == 1.0


def test_ade20k_bad_input(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="ADEChallengeData2016/images"):
        ADE20K(tmp_path, "train")
    _write_ade(tmp_path / "ADEChallengeData2016")
    (tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="ADE_val_00000001.png"):
        ADE20K(tmp_path, "val")[0]


# ---- transforms


def test_dpt_resize_shape_by_hand() -> None:
    # 480x640 to 384: scale 0.8 (height) is closer to 1 than 0.6 (width) -> 384 x 512.
    assert dpt_resize_shape(480, 640) == (384, 512)
    # KITTI 375x1242: scale 1.024 -> 384 x 1271.8 -> nearest multiple of 32 = 1280.
    assert dpt_resize_shape(375, 1242) == (384, 1280)
    out = dpt_eval_transform(torch.full((3, 480, 640), 0.75))
    assert out.shape == (3, 384, 512)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))  # (0.75 - 0.5) / 0.5


def test_deit_transforms_follow_the_recipe() -> None:
    names = [type(t).__name__ for t in deit_train_transform(224, "rand-m9-mstd0.5-inc1").transforms]
    assert "RandAugment" in names and "RandomResizedCropAndInterpolation" in names
    image = deit_eval_transform(224)(Image.new("RGB", (400, 300)))
    assert image.shape == (3, 224, 224)


def _posterize_at_zero_bits(transform: Any) -> Any:
    """Reduce the transform's RandAugment to its posterize op, always applied at magnitude 10 (0 bits)."""
    (augment,) = [step for step in transform.transforms if isinstance(step, RandAugment)]
    (op,) = [op for op in augment.ops if op.name == "PosterizeIncreasing"]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    augment.ops, augment.num_layers = [op], 1
    return op


def test_deit_randaugment_posterize_to_zero_bits_gives_black_as_pillow_before_13() -> None:
    # mstd0.5 clips about 2 % of magnitudes to 10, where PosterizeIncreasing keeps 0 bits; Pillow 13 raises
    # there, Pillow < 13 (what DeiT trained with) returned a black image.
    transform = deit_train_transform(16, "rand-m9-mstd0.5-inc1")
    op = _posterize_at_zero_bits(transform)
    image = Image.new("RGB", (20, 16), (200, 120, 40))
    assert np.asarray(op(image)).max() == 0
    out = transform(image)  # the whole pipeline: crop, flip, posterize, normalise
    black = (-torch.tensor(IMAGENET_DEFAULT_MEAN) / torch.tensor(IMAGENET_DEFAULT_STD)).view(3, 1, 1)
    torch.testing.assert_close(out, black.expand_as(out))


def test_paper_classification_erases_once_on_the_batch_and_reads_randaugment_from_the_recipe(
    tmp_path: Path,
) -> None:
    for split in ("train", "val"):
        _write_rgb(tmp_path / "imagenet" / split / "n01440764" / "a.JPEG", 30, 40)
    recipe = {**CLASSIFICATION_PROFILES["paper"], "image_size": 32, "randaugment": "rand-m5-n3-mstd0.5-inc1"}
    steps = build_dataset("imagenet", "train", recipe, tmp_path).transform.transforms
    assert not any(isinstance(step, RandomErasing) for step in steps)  # the dataset erased too
    erasing = build_task("classification", recipe).erasing
    assert erasing is not None and erasing.probability == recipe["random_erasing"] == 0.25
    (augment,) = [step for step in steps if isinstance(step, RandAugment)]
    assert augment.num_layers == 3 and {op.magnitude for op in augment.ops} == {5}


def test_segmentation_train_transform_pads_with_ignore_and_keeps_labels() -> None:
    image = torch.rand(3, 40, 60)
    mask = torch.arange(40 * 60).reshape(40, 60) % 5
    g = torch.Generator().manual_seed(0)
    out_image, out_mask = segmentation_train_transform(image, mask, base_size=30, crop_size=48, generator=g)
    assert out_image.shape == (3, 48, 48) and out_mask.shape == (48, 48)
    assert set(out_mask.unique().tolist()) <= {-1, 0, 1, 2, 3, 4}


def test_a_16_bit_png_reads_as_uint16_where_pillow_opens_it_as_32_bit(tmp_path, monkeypatch):
    from lvit.data import datasets

    depth = np.array([[0, 1000], [65535, 7]], dtype=np.uint16)
    Image.fromarray(depth).save(tmp_path / "depth.png")
    pillow_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path: pillow_open(path).convert("I"))  # as Pillow 10 opens it
    read = datasets._load_png_array(tmp_path / "depth.png")
    assert read.dtype == np.uint16 and np.array_equal(read, depth)  # KITTI's and HRWSI's checks accept it
