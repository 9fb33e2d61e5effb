"""DIW, ETH3D, Sintel and TUM (``lvit.data.zero_shot``): each loader reads files written here in the released
format and gives back what was written, in place; ``lvit evaluate`` scores them by the MiDaS protocol."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from test_evaluate import ConstantDepth

from lvit import create_model
from lvit.cli import main
from lvit.data.cli import _FAR, _NEAR
from lvit.data.datasets import LayoutError
from lvit.data.zero_shot import DIW, ETH3D, TUM, Sintel, read_diw_csv, read_sintel_depth
from lvit.evaluate import EvalOptions, build_eval_dataset, run_protocol
from lvit.results import load_results

CPU = torch.device("cpu")
H, W = 64, 96  # multiples of 32: at net size 64 the network input is the image itself

pytestmark = pytest.mark.usefixtures("single_thread")


def _rgb(red_left: float = 1.0) -> np.ndarray:
    """Red = ``red_left`` on the left half, 0 on the right; green and blue mark the channel order."""
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[:, : W // 2, 0] = round(255 * red_left)
    image[..., 1], image[..., 2] = 64, 128
    return image


def _depth_pattern() -> np.ndarray:
    """Depth that differs by row and column (so a transposed or flipped read shows), with invalid values."""
    depth = (1.0 + np.arange(H)[:, None] / H + np.arange(W)[None, :] / (4 * W)).astype(np.float32)
    depth[0, :5] = np.inf
    depth[1, :5] = 0.0
    depth[2, :5] = 75.0  # beyond a 72 m cap
    depth[3, :5] = np.nan
    return depth


def _expected_valid(depth: np.ndarray, cap: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (depth > 0) & (depth < cap)


class RedInverseDepth(nn.Module):
    """Inverse depth = the red channel: the left half of :func:`_rgb` is near, the right half far."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _assert_dense(sample: dict[str, torch.Tensor], depth: np.ndarray, cap: float) -> None:
    valid = _expected_valid(depth, cap)
    assert torch.equal(sample["valid"], torch.from_numpy(valid))
    np.testing.assert_array_equal(sample["depth"].numpy(), np.where(valid, depth, 0.0))


def _abs_rel_at_cap(depth: np.ndarray, cap: float) -> float:
    valid = _expected_valid(depth, cap)
    return float(np.mean(np.abs(cap - depth[valid]) / depth[valid]))


# ------------------------------------------------------------------------------------------------- ETH3D


def _write_eth3d(root: Path, depth: np.ndarray) -> None:
    for scene, name in (("courtyard", "DSC_0286.JPG"), ("office", "DSC_0219.JPG")):
        images = root / "eth3d" / scene / "images" / "dslr_images"
        gts = root / "eth3d" / scene / "ground_truth_depth" / "dslr_images"
        images.mkdir(parents=True)
        gts.mkdir(parents=True)
        Image.fromarray(_rgb()).save(images / name, format="PNG")  # lossless, under the release's name
        depth.astype("<f4").tofile(gts / name)  # headerless float32, as released


def test_eth3d_reads_the_raw_float32_raster_in_place_and_masks_inf_zero_nan_and_cap(tmp_path: Path) -> None:
    depth = _depth_pattern()
    _write_eth3d(tmp_path, depth)
    data = ETH3D(tmp_path, max_depth=72.0)
    assert [p.parts[-4] for p in data.files] == ["courtyard", "office"]
    sample = data[0]
    _assert_dense(sample, depth, 72.0)
    assert sample["image"].shape == (3, H, W)
    assert sample["image"][:, 0, 0].tolist() == pytest.approx([1.0, 64 / 255, 128 / 255])


def test_eth3d_refuses_a_raster_of_another_size_a_portrait_image_and_a_root_without_images(tmp_path) -> None:
    _write_eth3d(tmp_path, np.ones((H, W + 1), dtype=np.float32))
    with pytest.raises(RuntimeError, match="float32 values for a 96x64 image"):
        ETH3D(tmp_path, max_depth=72.0)[0]
    with pytest.raises(LayoutError, match="ground_truth_depth"):
        ETH3D(tmp_path / "elsewhere", max_depth=72.0)
    # a rotated image has the raster's pixel count, so only its orientation shows the mismatch
    rotated = ETH3D(tmp_path, max_depth=72.0).files[0]
    Image.fromarray(np.rot90(_rgb()).copy()).save(rotated, format="PNG")
    raster = rotated.parents[2] / "ground_truth_depth" / "dslr_images" / rotated.name
    np.ones((H, W), dtype="<f4").tofile(raster)
    with pytest.raises(RuntimeError, match="portrait: ETH3D stores every image and its depth landscape"):
        ETH3D(tmp_path, max_depth=72.0)[0]


@pytest.mark.parametrize("dataset, metric, cap", [
    ("eth3d", "eth3d_abs_rel", 72.0), ("sintel", "sintel_abs_rel", 72.0), ("tum", "tum_abs_rel", 10.0),
])
def test_zero_shot_scores_against_the_dataset_cap_and_depth_cap_moves_it(tmp_path, dataset, metric, cap):
    """A constant prediction lands on the cap everywhere, so AbsRel tells which cap clamped and masked."""
    depth = _depth_pattern() * (cap / 72.0)  # a share of the pixels beyond the cap (75 m, scaled)
    {"eth3d": _write_eth3d, "sintel": _write_sintel, "tum": _write_tum}[dataset](tmp_path, depth)
    data, split = build_eval_dataset(dataset, "zero_shot", tmp_path, EvalOptions())
    measured = run_protocol(ConstantDepth(1.0), dataset, "zero_shot", data, CPU, EvalOptions(net_size=64))
    assert split == "test"
    assert measured[metric] == pytest.approx(_abs_rel_at_cap(depth, cap))
    # --depth-cap moves the clamp and the valid range together: the pixels beyond the old cap now count
    options = EvalOptions(net_size=64, depth_cap=cap * 80 / 72)
    data, _ = build_eval_dataset(dataset, "zero_shot", tmp_path, options)
    measured = run_protocol(ConstantDepth(1.0), dataset, "zero_shot", data, CPU, options)
    assert measured[metric] == pytest.approx(_abs_rel_at_cap(depth, cap * 80 / 72))


def test_eth3d_aligned_prediction_of_the_true_layout_scores_zero(tmp_path: Path) -> None:
    """Near (depth 2) where the image is red, far (4) elsewhere: the red channel aligns onto it exactly."""
    depth = np.where(np.arange(W)[None, :] < W // 2, 2.0, 4.0) * np.ones((H, 1))
    _write_eth3d(tmp_path, depth.astype(np.float32))
    data, _ = build_eval_dataset("eth3d", "zero_shot", tmp_path, EvalOptions())
    measured = run_protocol(RedInverseDepth(), "eth3d", "zero_shot", data, CPU, EvalOptions(net_size=64))
    assert measured["eth3d_abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert measured["eth3d_delta_error"] == 0.0


# ------------------------------------------------------------------------------------------------ Sintel


def _write_dpt(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tag, width_height = np.array([202021.25], "<f4"), np.array([depth.shape[1], depth.shape[0]], "<i4")
    path.write_bytes(tag.tobytes() + width_height.tobytes() + depth.astype("<f4").tobytes())


def _write_sintel(root: Path, depth: np.ndarray) -> None:
    training = root / "sintel" / "training"
    for render_pass, red in (("final", 1.0), ("clean", 0.5)):
        for scene in ("alley_1", "market_2"):
            (training / render_pass / scene).mkdir(parents=True)
            Image.fromarray(_rgb(red)).save(training / render_pass / scene / "frame_0001.png")
    for scene in ("alley_1", "market_2"):
        _write_dpt(training / "depth" / scene / "frame_0001.dpt", depth)


def test_sintel_reads_dpt_depth_in_place_from_the_final_pass_by_default(tmp_path: Path) -> None:
    depth = _depth_pattern()
    _write_sintel(tmp_path, depth)
    written = tmp_path / "sintel" / "training" / "depth" / "alley_1" / "frame_0001.dpt"
    np.testing.assert_array_equal(read_sintel_depth(written), depth)
    final = Sintel(tmp_path, max_depth=72.0)
    assert len(final) == 2
    _assert_dense(final[1], depth, 72.0)
    assert float(final[0]["image"][0, 0, 0]) == 1.0
    clean = Sintel(tmp_path, max_depth=72.0, render_pass="clean")
    assert float(clean[0]["image"][0, 0, 0]) == pytest.approx(128 / 255)
    with pytest.raises(ValueError, match="valid: final, clean"):
        Sintel(tmp_path, max_depth=72.0, render_pass="albedo")


def test_sintel_refuses_a_file_without_the_tag_or_with_missing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "bad.dpt"
    path.write_bytes(np.array([1.0, 0, 0], "<f4").tobytes())
    with pytest.raises(RuntimeError, match="not a Sintel .dpt file"):
        read_sintel_depth(path)
    _write_dpt(path, np.ones((4, 5), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(RuntimeError, match="76 bytes of depth for a 5x4 map"):
        read_sintel_depth(path)


# --------------------------------------------------------------------------------------------------- TUM


def _write_tum(root: Path, depth: np.ndarray, rgb: np.ndarray | None = None) -> None:
    (root / "tum").mkdir(parents=True)
    for name in ("ZL1tYG0uZu4_10366667.jpg.h5", "aB3_200.jpg.h5"):
        with h5py.File(root / "tum" / name, "w") as f:
            f["gt/img_1"] = _rgb().astype(np.float32) / 255 if rgb is None else rgb
            f["gt/gt_depth"] = depth
            f["gt/human_mask"] = np.zeros(depth.shape, dtype=np.float32)


def test_tum_reads_image_and_depth_from_the_hdf5_in_place(tmp_path: Path) -> None:
    depth = _depth_pattern() * 5  # 5..10 m: the 10 m cap cuts the bottom rows
    _write_tum(tmp_path, depth)
    data = TUM(tmp_path, max_depth=10.0)
    assert [p.name for p in data.files] == ["ZL1tYG0uZu4_10366667.jpg.h5", "aB3_200.jpg.h5"]
    sample = data[0]
    _assert_dense(sample, depth, 10.0)
    assert sample["image"][:, 0, -1].tolist() == pytest.approx([0.0, 64 / 255, 128 / 255])


@pytest.mark.parametrize("scale, nan", [(1.0, False), (1 / 255, True)])
def test_tum_refuses_an_image_outside_0_1_or_nan(tmp_path, scale, nan) -> None:
    rgb = _rgb().astype(np.float32) * scale  # 0..255, or 0..1 with a NaN
    rgb[0, 0, 0] = np.nan if nan else rgb[0, 0, 0]
    _write_tum(tmp_path, np.ones((H, W), dtype=np.float32), rgb=rgb)
    with pytest.raises(RuntimeError, match=r"must be \(H, W, 3\) in \[0, 1\]"):
        TUM(tmp_path, max_depth=10.0)[0]


def test_tum_refuses_a_cap_that_is_not_positive(tmp_path) -> None:
    _write_tum(tmp_path, np.ones((H, W), dtype=np.float32))
    with pytest.raises(ValueError, match="max_depth must be positive, got nan"):
        TUM(tmp_path, max_depth=float("nan"))


def test_tum_through_the_cli_writes_its_table_1_column(tmp_path: Path) -> None:
    depth = np.where(np.arange(W)[None, :] < W // 2, 2.0, 4.0) * np.ones((H, 1))
    _write_tum(tmp_path, depth.astype(np.float32))
    backbone = {"img_size": 64, "patch_size": 16, "embed_dim": 48, "num_heads": 3, "depth": 4}
    kwargs = {"backbone_kwargs": backbone, "block_taps": (0, 1, 2, 3), "reassemble_channels": (6, 12, 24, 48),
              "features": 16}
    checkpoint = tmp_path / "dpt_tiny_depth.pt"
    torch.save(create_model("dpt_tiny", task="depth", **kwargs).state_dict(), checkpoint)
    code = main(["evaluate", "--results-dir", str(tmp_path / "results"), "--device", "cpu",
                 "--model", "dpt_tiny", "--checkpoint", str(checkpoint), "--dataset", "tum",
                 "--data-root", str(tmp_path), "--net-size", "64", "--model-kwargs", json.dumps(kwargs)])
    assert code == 0
    df = load_results(tmp_path / "results", profile="pretrained")
    assert set(df["experiment"]) == {"pretrained_dpt_zero_shot"}
    assert set(df["metric"]) == {"tum_abs_rel", "tum_delta_error", "tum_rmse"}
    assert np.isfinite(df["value"]).all()


# --------------------------------------------------------------------------------------------------- DIW


def _write_diw(root: Path, annotations: list[str]) -> None:
    (root / "diw" / "DIW_Annotations").mkdir(parents=True)
    (root / "diw" / "DIW_test").mkdir()
    lines = []
    for i, annotation in enumerate(annotations):
        Image.fromarray(_rgb()).save(root / "diw" / "DIW_test" / f"{i:04d}.thumb", format="PNG")
        lines += [f"./DIW_test/{i:04d}.thumb", annotation]
    (root / "diw" / "DIW_Annotations" / "DIW_test.csv").write_text("\n".join(lines) + "\n")


def test_diw_reads_1_based_y_x_pairs_and_the_relation(tmp_path: Path) -> None:
    _write_diw(tmp_path, [f"10,5,20,90,>,{W},{H}", f"1,1,64,96,<,{W},{H}", f"70,0,3,120,>,{W},{H}",
                          f"21,11,41,181,<,{2 * W},{2 * H}"])
    data = DIW(tmp_path)
    assert data[0]["pairs"].tolist() == [[9, 4, 19, 89, 1]]  # '>': point A is farther
    assert data[1]["pairs"].tolist() == [[0, 0, 63, 95, -1]]  # '<': A is closer; corners, 0-based
    assert data[2]["pairs"].tolist() == [[63, 0, 2, 95, 1]]  # outside the annotated frame: onto its border
    assert data[3]["pairs"].tolist() == [[10, 5, 20, 90, -1]]  # annotated at twice the stored size: halved


def test_diw_whdr_reads_greater_than_as_point_a_farther(tmp_path: Path) -> None:
    """Left half red = near. A on the left, B on the right: '<' (A closer) agrees with the image, '>' not."""
    _write_diw(tmp_path, [f"30,10,30,80,<,{W},{H}", f"30,10,30,80,>,{W},{H}", f"5,85,40,3,>,{W},{H}"])
    data, _ = build_eval_dataset("diw", "zero_shot", tmp_path, EvalOptions())
    measured = run_protocol(RedInverseDepth(), "diw", "zero_shot", data, CPU, EvalOptions(net_size=64))
    assert measured == {"diw_whdr": pytest.approx(100 / 3)}


@pytest.mark.parametrize("content, message", [
    ("./DIW_test/0000.thumb\n", "alternates an image line and an annotation line"),
    ("./DIW_test/0000.thumb\n1,2,3,4,=,5,6\n", "expected 'y_A,x_A,y_B,x_B,>|<,width,height'"),
    ("", "lists no image"),
])
def test_diw_csv_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "DIW_test.csv"
    path.write_text(content)
    with pytest.raises((ValueError, LayoutError), match=message):
        read_diw_csv(path)


# ------------------------------------------------------------------------------------------- data preview


def test_preview_marks_the_diw_pair_closer_red_and_farther_blue(tmp_path: Path) -> None:
    from lvit.data.cli import preview_grid

    _write_diw(tmp_path, [f"30,10,30,80,>,{W},{H}"])  # '>': A (left) is the farther
    grid = preview_grid("diw", 1, W, "test", 0, None, data_root=tmp_path)
    assert grid.shape == (3, W, W)  # the 64x96 image fits at scale 1, padded by 16 rows above and below
    assert grid[:, 16 + 29, 9].tolist() == [0.0, 0.0, 1.0]
    assert grid[:, 16 + 29, 79].tolist() == [1.0, 0.0, 0.0]
    assert grid[:, 0, 0].tolist() == [0.0, 0.0, 0.0]  # the padding
    assert grid[:, 16, 0].tolist() == pytest.approx([1.0, 64 / 255, 128 / 255])  # the image's own pixel


def test_preview_shows_eth3d_depth_whole_near_red_far_blue_and_names_a_missing_layout(tmp_path: Path) -> None:
    from lvit.data.cli import preview_grid

    depth = np.where(np.arange(W)[None, :] < W // 2, 2.0, 4.0) * np.ones((H, 1))
    _write_eth3d(tmp_path, depth.astype(np.float32))
    grid = preview_grid("eth3d", 2, 48, "test", 0, None, data_root=tmp_path)
    assert grid.shape == (3, 2 * (48 + 4), 2 * 48 + 3 * 2)  # RGB row over depth row, each padded by 2 px
    depth_row = grid[:, 52 + 2 :, 2:]  # the first depth map: 32x48 in the square, 8 padding rows above
    left, right = depth_row[:, 8 + 16, 4], depth_row[:, 8 + 16, 44]
    red, blue = torch.tensor(_NEAR), torch.tensor(_FAR)
    assert (left - red).norm() < (left - blue).norm() and (right - blue).norm() < (right - red).norm()
    with pytest.raises(SystemExit, match="ground_truth_depth"):
        main(["data", "preview", "--dataset", "eth3d", "--data-root", str(tmp_path / "elsewhere")])
