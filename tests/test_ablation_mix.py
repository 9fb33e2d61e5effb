"""DPT's ablation mix (ReDWeb, HRWSI, BlendedMVS) on small files in the released layouts, and Table 7 at the
paper profile trained on it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lvit import metrics
from lvit import results as store
from lvit.data import build_dataset
from lvit.data.ablation_mix import HRWSI, AblationMix, BlendedMVS, ReDWeb, _redweb_val, read_pfm
from lvit.data.datasets import LayoutError
from lvit.engine import run as runner
from lvit.experiments import recipes

RNG = np.random.default_rng(0)


def _jpg(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pfm(path: Path, depth: np.ndarray, little_endian: bool = True) -> None:
    """PFM as the format stores it: bottom row first; the scale's sign gives the byte order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.flipud(depth).astype("<f4" if little_endian else ">f4")
    header = f"Pf\n{depth.shape[1]} {depth.shape[0]}\n{-1.0 if little_endian else 1.0}\n".encode()
    path.write_bytes(header + rows.tobytes())


def _in_redweb_val(stem: str) -> bool:
    """The documented rule: the ids whose SHA-1 falls into one bucket of twelve."""
    return int(hashlib.sha1(stem.encode()).hexdigest(), 16) % 12 == 0


def write_ablation_mix(root: Path) -> dict[str, list[str]]:
    """A few images of each dataset, of several sizes; returns the ReDWeb ids of each split."""
    ids = [f"rw{i:03d}" for i in range(40)]
    for i, stem in enumerate(ids):
        height, width = (40, 56) if i % 2 else (48, 40)
        _jpg(root / "redweb/ReDWeb_V1/Imgs" / f"{stem}.jpg", height, width)
        rd = RNG.integers(0, 256, (height, width), dtype=np.uint8)
        _png(root / "redweb/ReDWeb_V1/RDs" / f"{stem}.png", rd)
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            folder = root / "hrwsi" / split
            _jpg(folder / "imgs" / f"h{i}.jpg", 36, 52)
            _png(folder / "gts" / f"h{i}.png", RNG.integers(0, 256, (36, 52), dtype=np.uint8))
            _png(folder / "valid_masks" / f"h{i}.png", (RNG.random((36, 52)) > 0.2).astype(np.uint8) * 255)
    for scene, count in (("sceneA", 2), ("sceneB", 1), ("sceneV", 2)):
        for i in range(count):
            _jpg(root / "blendedmvs" / scene / "blended_images" / f"{i:08d}.jpg", 48, 64)
            _jpg(root / "blendedmvs" / scene / "blended_images" / f"{i:08d}_masked.jpg", 48, 64)
            _pfm(root / "blendedmvs" / scene / "rendered_depth_maps" / f"{i:08d}.pfm",
                 RNG.uniform(0.5, 30.0, (48, 64)).astype(np.float32))
    (root / "blendedmvs/training_list.txt").write_text("sceneA\nsceneB\n")
    (root / "blendedmvs/validation_list.txt").write_text("sceneV\n")
    return {"val": [s for s in ids if _in_redweb_val(s)], "train": [s for s in ids if not _in_redweb_val(s)]}


@pytest.fixture(scope="module")
def mix_root(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("data")
    return root, write_ablation_mix(root)


def test_pfm_is_read_top_row_first_in_either_byte_order(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5
    for little in (True, False):
        _pfm(tmp_path / "d.pfm", depth, little)
        read = read_pfm(tmp_path / "d.pfm")
        assert read.dtype == np.float32 and np.array_equal(read, depth)
    (tmp_path / "colour.pfm").write_bytes(b"PF\n1 1\n-1.0\n" + np.zeros(3, "<f4").tobytes())
    with pytest.raises(RuntimeError, match="not a greyscale PFM"):
        read_pfm(tmp_path / "colour.pfm")
    (tmp_path / "short.pfm").write_bytes(b"Pf\n2 2\n-1.0\n" + np.zeros(3, "<f4").tobytes())
    with pytest.raises(RuntimeError, match="12 bytes of data for a 2x2 PFM"):
        read_pfm(tmp_path / "short.pfm")


def test_redweb_rd_is_negative_disparity_with_sky_invalid_and_a_name_hash_split(mix_root):
    root, ids = mix_root
    assert ids["val"] and ids["train"]
    for split in ("train", "val"):
        assert [p.stem for p in ReDWeb(root, split).images] == ids[split]
    sample = ReDWeb(root, "train")[0]
    rd = np.asarray(Image.open(root / "redweb/ReDWeb_V1/RDs" / f"{ids['train'][0]}.png")).astype(np.float64)
    assert torch.equal(sample["valid"], torch.from_numpy(rd != 255))
    expected = torch.from_numpy(256.0 / (256.0 - rd)).float()  # larger RD = farther
    assert torch.allclose(sample["depth"][sample["valid"]], expected[sample["valid"]])
    assert sample["image"].shape[-2:] == sample["depth"].shape
    held_out = sum(_redweb_val(f"{i:06d}") for i in range(3600))  # the library's rule
    assert 250 <= held_out <= 350  # about 300 of ReDWeb's 3,600, as DPT's ~1k validation images in total


def test_hrwsi_disparity_is_scaled_by_its_type_and_masked_by_valid_masks(mix_root, tmp_path):
    root, _ = mix_root
    sample = HRWSI(root, "val")[1]
    gt = np.asarray(Image.open(root / "hrwsi/val/gts/h1.png")).astype(np.float64)
    mask = np.asarray(Image.open(root / "hrwsi/val/valid_masks/h1.png")) > 0
    assert torch.equal(sample["valid"], torch.from_numpy(mask & (gt > 0)))
    valid = sample["valid"]
    expected = torch.from_numpy(255.0 / np.maximum(gt, 1)).float()  # gt = 0 is invalid
    assert torch.allclose(sample["depth"][valid], expected[valid])
    assert len(HRWSI(root, "train")) == 3
    folder = tmp_path / "hrwsi" / "train"  # a 16-bit disparity PNG is scaled by 65535
    _jpg(folder / "imgs" / "x.jpg", 4, 4)
    _png(folder / "gts" / "x.png", np.full((4, 4), 1000, dtype=np.uint16))
    _png(folder / "valid_masks" / "x.png", np.full((4, 4), 255, dtype=np.uint8))
    assert torch.allclose(HRWSI(tmp_path, "train")[0]["depth"], torch.full((4, 4), 65535 / 1000))


def test_blendedmvs_splits_by_the_release_scene_lists_and_skips_masked_images(mix_root):
    root, _ = mix_root
    train, val = BlendedMVS(root, "train"), BlendedMVS(root, "val")
    assert {p.parent.parent.name for p in train.images} == {"sceneA", "sceneB"} and len(train) == 3
    assert {p.parent.parent.name for p in val.images} == {"sceneV"} and len(val) == 2
    sample = val[1]
    depth = read_pfm(root / "blendedmvs/sceneV/rendered_depth_maps/00000001.pfm")
    assert torch.allclose(sample["depth"], torch.from_numpy(depth)) and sample["valid"].all()


def test_a_missing_folder_or_an_unknown_member_is_refused_with_the_layout(tmp_path):
    with pytest.raises(LayoutError, match=r"redweb/ReDWeb_V1/RDs; expected layout:\n.*Imgs/<id>\.jpg"):
        ReDWeb(tmp_path, "train")
    with pytest.raises(LayoutError, match=r"blendedmvs/validation_list\.txt; expected layout"):
        BlendedMVS(tmp_path, "val")
    with pytest.raises(ValueError, match=r"ablation-mix dataset\(s\) \['diw'\]; valid: redweb, hrwsi"):
        AblationMix(tmp_path, "train", ("hrwsi", "diw"))
    with pytest.raises(ValueError, match="unknown HRWSI split 'test'"):
        HRWSI(tmp_path, "test")


def test_balanced_training_draws_each_dataset_equally_and_validation_each_image_once(mix_root):
    root, ids = mix_root
    balanced = AblationMix(root, "train", balanced=True)
    sizes = [len(ids["train"]), 3, 3]
    assert len(balanced) == 3 * max(sizes)
    drawn = [balanced._locate(i) for i in range(len(balanced))]
    for member, size in enumerate(sizes):
        locals_ = [local for m, local in drawn if m == member]
        assert len(locals_) == max(sizes) and set(locals_) == set(range(size))  # equal share, all seen
    plain = AblationMix(root, "val")
    assert len(plain) == len(ids["val"]) + 2 + 2
    assert sorted(plain._locate(i) for i in range(len(plain))) == sorted(
        (m, j) for m, n in enumerate((len(ids["val"]), 2, 2)) for j in range(n))
    with pytest.raises(IndexError):
        plain[len(plain)]


def test_build_dataset_crops_training_images_and_centres_validation_at_the_recipe_size(mix_root):
    root, _ = mix_root
    recipe = {"image_size": 32, "val_domains": ("hrwsi",)}
    train = build_dataset("dpt_ablation_mix", "train", recipe, root)
    val = build_dataset("dpt_ablation_mix", "val", recipe, root)
    assert train.domains == ("redweb", "hrwsi", "blendedmvs") and val.domains == ("hrwsi",)
    for dataset in (train, val):
        for index in range(2):
            sample = dataset[index]
            assert sample["image"].shape == (3, 32, 32) and sample["depth"].shape == (32, 32)
            assert sample["image"].min() < -0.5  # normalised with mean = std = 0.5
    first, again = val[0], val[0]
    assert all(torch.equal(first[k], again[k]) for k in ("image", "depth", "valid"))  # deterministic
    # HRWSI's 36 x 52 validation image: shorter side to 32, the centre 32 columns of 46
    source = HRWSI(root, "val")[0]
    resized = torch.nn.functional.interpolate(source["depth"][None, None], size=(32, 46), mode="nearest")
    assert torch.equal(first["depth"], resized[0, 0, :, 7:39])


def test_an_unfixed_depth_cap_clamps_each_image_at_its_own_farthest_valid_depth():
    gt = torch.stack([torch.linspace(1, 4, 64).reshape(8, 8), torch.linspace(2, 50, 64).reshape(8, 8)])
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[:, 0, :3] = False
    gt[:, 0, :3] = 1000.0  # far, but not valid: it must not raise the cap
    pred = 1.0 / gt + 0.05 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    pooled = metrics.evaluate_zero_shot(pred, gt, mask, None, reduction="none")
    for i in range(2):
        farthest = float(gt[i][mask[i]].max())
        alone = metrics.evaluate_zero_shot(pred[i], gt[i], mask[i], farthest, reduction="none")
        for key in ("abs_rel", "delta_error", "rmse"):
            assert torch.allclose(pooled[key][i], alone[key][0])
    one_cap = metrics.evaluate_zero_shot(pred, gt, mask, 50.0, reduction="none")
    assert not torch.allclose(pooled["abs_rel"][0], one_cap["abs_rel"][0])  # the cap applies per image


@pytest.fixture
def shrunk_paper(monkeypatch) -> None:
    """Table 7's paper recipe at a CPU test's size, from scratch (there is no ImageNet file here)."""
    paper = recipes.ABLATION_DEPTH_PROFILES["paper"]
    assert paper["dataset"] == "dpt_ablation_mix" and recipes.DEPTH_PROFILES["paper"]["dataset"] == "mix6"
    shrunk = {k: v for k, v in paper.items() if k != "pretrain"}
    shrunk.update(image_size=32, epochs=1, batch_size=4, proxy_models={"dpt_base": "dpt_tiny"}, width=48,
                  features=16, patch_size=8, num_workers=2)  # loader processes, as at paper
    monkeypatch.setitem(recipes.ABLATION_DEPTH_PROFILES, "paper", shrunk)


def _run_table7(root: Path, results_dir: Path) -> pd.DataFrame:
    return runner.run_experiment("dpt_read_ablation", "paper", seeds=[0], rows=["Project"], device="cpu",
                                 results_dir=results_dir, data_root=root)


def _assert_four_scores(df: pd.DataFrame) -> None:
    assert len(df) == 4  # one row per metric, written once
    values = dict(zip(df["metric"], df["value"], strict=True))
    assert set(values) == {"hrwsi_abs_rel", "blendedmvs_abs_rel", "redweb_abs_rel", "mean_abs_rel"}
    parts = [values[f"{d}_abs_rel"] for d in ("hrwsi", "blendedmvs", "redweb")]
    assert all(np.isfinite(parts)) and len(set(parts)) == 3  # three validation sets, three numbers
    assert values["mean_abs_rel"] == pytest.approx(sum(parts) / 3)


def test_table7_trains_on_the_ablation_mix_at_the_paper_profile_and_scores_each_dataset(mix_root, tmp_path,
                                                                                      shrunk_paper):
    _assert_four_scores(_run_table7(mix_root[0], tmp_path / "results"))


def _rank_of_table7(rank: int, root: Path, results_dir: Path) -> None:
    _run_table7(root, results_dir)


def test_under_torchrun_every_rank_scores_its_share_and_rank0_writes_the_row_once(mix_root, tmp_path,
                                                                                 shrunk_paper, on_two_ranks):
    on_two_ranks(_rank_of_table7, mix_root[0], tmp_path / "results")  # the ranks inherit the shrunk recipe
    _assert_four_scores(store.load_results(tmp_path / "results", "paper", "dpt_read_ablation"))


def test_the_training_crop_flips_image_depth_and_mask_together_at_the_recipe_size():
    from lvit.data.transforms import depth_train_transform

    ramp = torch.linspace(0.1, 1.0, 50).expand(30, 50)  # increasing left to right
    valid = torch.zeros(30, 50, dtype=torch.bool)
    valid[:, :10] = True  # the left fifth
    directions = set()
    for seed in range(8):
        image, depth, mask = depth_train_transform(ramp.expand(3, 30, 50), 1 + ramp, valid, size=16,
                                                   generator=torch.Generator().manual_seed(seed))
        assert image.shape == (3, 16, 16) and depth.shape == mask.shape == (16, 16)
        rising = bool(depth[0, -1] > depth[0, 0])
        assert bool(image[0, 0, -1] > image[0, 0, 0]) == rising  # the image went the same way
        assert bool(mask[0, 0]) == rising and bool(mask[0, -1]) != rising  # and so did the mask
        directions.add(rising)
    assert directions == {True, False}  # the flip is random


def test_lvit_data_preview_shows_a_redweb_image_near_in_red_and_far_in_blue(tmp_path):
    from lvit.cli import main
    from lvit.data.cli import preview_grid

    stem = next(s for s in (f"v{i}" for i in range(100)) if _in_redweb_val(s))
    _jpg(tmp_path / "redweb/ReDWeb_V1/Imgs" / f"{stem}.jpg", 32, 48)
    rd = np.full((32, 48), 220, dtype=np.uint8)
    rd[:, :24] = 10  # RD is negative disparity: small on the left = near
    _png(tmp_path / "redweb/ReDWeb_V1/RDs" / f"{stem}.png", rd)
    grid = preview_grid("dpt_ablation_mix", 1, 32, "val", 0, "redweb", data_root=tmp_path)
    assert grid.shape == (3, 64, 32)  # an RGB row over a depth row (one sample: make_grid adds no padding)
    depth_row = grid[:, 32:]
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    left, right = depth_row[:, 16, 2], depth_row[:, 16, -3]
    assert (left - red).norm() < (left - blue).norm() and (right - blue).norm() < (right - red).norm()
    out = tmp_path / "grid.png"
    command = ["data", "preview", "--dataset", "dpt_ablation_mix", "--data-root", str(tmp_path), "--domain",
               "redweb", "--split", "val", "-n", "1", "--image-size", "32", "--out", str(out)]
    assert main(command) == 0
    assert Image.open(out).size == (32, 64)
    with pytest.raises(SystemExit, match="--domain 'indoor' is not one of dpt_ablation_mix's: redweb, hrwsi"):
        main(["data", "preview", "--dataset", "dpt_ablation_mix", "--domain", "indoor"])
