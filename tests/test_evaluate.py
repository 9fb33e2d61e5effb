"""``lvit evaluate``: checkpoints in the official file formats give the in-memory model's numbers; bad files
write nothing; each real dataset's protocol is checked on a fixture tree with hand-derived expectations."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy.io import savemat

from lvit import create_model
from lvit.cli import main
from lvit.data import LocalShapes, Scenes, build_dataset
from lvit.evaluate import (
    EvalOptions,
    build_eval_dataset,
    evaluate_zero_shot,
    ms_flip_logits,
    run_protocol,
)
from lvit.experiments.pretrained import METRIC_DEPTH, RELEASED_CHECKPOINTS
from lvit.results import load_results

CLASSIFIER_KWARGS = {"num_classes": 8, "img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2}
DPT_KWARGS = {
    "backbone_kwargs": {"img_size": 32, "patch_size": 16, "embed_dim": 48, "num_heads": 3, "depth": 4},
    "block_taps": (0, 1, 2, 3), "reassemble_channels": (6, 12, 24, 48), "features": 16,
}
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("single_thread")


def _evaluate_cli(tmp_path: Path, *args: str) -> int:
    return main(["evaluate", "--results-dir", str(tmp_path / "results"), "--device", "cpu", *args])


def _rows(tmp_path: Path) -> dict[str, float]:
    df = load_results(tmp_path / "results", profile="pretrained")
    return dict(zip(df["metric"], df["value"], strict=True))


# ------------------------------------------------------------------ checkpoints round-trip through the CLI


def test_localvit_release_format_gives_the_in_memory_numbers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("localvit_tiny", **CLASSIFIER_KWARGS)
    train = LocalShapes("train", 16, 32, num_classes=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):  # a few steps, so the weights are not the initialisation
        images, labels = train.generate(range(step * 4, step * 4 + 4))
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    checkpoint = tmp_path / "localvit_tiny_trained.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, checkpoint)  # the release's dict-with-"model"

    code = _evaluate_cli(tmp_path, "--model", "localvit_tiny", "--checkpoint", str(checkpoint), "--dataset",
                         "local_shapes", "--samples", "16", "--model-kwargs", json.dumps(CLASSIFIER_KWARGS))
    assert code == 0

    model.eval()
    # the evaluator's set: the procedural images, ImageNet-normalised as in training (lvit.data)
    val = build_dataset("local_shapes", "val", {"image_size": 32, "val_samples": 16, "num_classes": 8})
    images, labels = val.generate(range(16))
    with torch.no_grad():
        logits = model(images)
    ranked = logits.argsort(dim=1, descending=True)
    expected = {
        "top1": (ranked[:, 0] == labels).double().mean().item() * 100,
        "top5": (ranked[:, :5] == labels[:, None]).any(1).double().mean().item() * 100,
        "loss": -logits.log_softmax(1).gather(1, labels[:, None]).mean().item(),
    }
    measured = _rows(tmp_path)
    assert measured == pytest.approx(expected, rel=1e-5, abs=1e-6)
    df = load_results(tmp_path / "results", profile="pretrained")
    assert set(df["experiment"]) == {"pretrained_local_shapes_classification"}
    assert set(df["row"]) == {checkpoint.name}
    assert set(df["checkpoint_sha256"]) == {hashlib.sha256(checkpoint.read_bytes()).hexdigest()}


def _hand_zero_shot(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, cap: float) -> tuple[float, float]:
    """AbsRel and δ>1.25 (percent) of one image by the MiDaS gist, with numpy's least squares."""
    a = np.stack([pred[valid], np.ones(valid.sum())], axis=1).astype(np.float64)
    (scale, shift), *_ = np.linalg.lstsq(a, 1.0 / gt[valid].astype(np.float64), rcond=None)
    depth = 1.0 / np.maximum(scale * pred[valid] + shift, 1.0 / cap)
    ratio = np.maximum(depth / gt[valid], gt[valid] / depth)
    return float(np.mean(np.abs(depth - gt[valid]) / gt[valid])), float(np.mean(ratio > 1.25) * 100)


def test_dpt_release_format_zero_shot_gives_the_in_memory_numbers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("dpt_tiny", task="depth", **DPT_KWARGS)
    batch = Scenes("train", 4, 32).generate(range(4))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        target = torch.where(batch["valid"], 1 / batch["depth"].clamp(min=1e-3), 0)
        (model(batch["image"]) - target).abs().mean().backward()
        optimizer.step()
    checkpoint = tmp_path / "dpt_tiny_trained.pt"
    torch.save(model.state_dict(), checkpoint)  # the DPT release's bare state_dict

    code = _evaluate_cli(tmp_path, "--model", "dpt_tiny", "--checkpoint", str(checkpoint), "--dataset",
                         "scenes", "--samples", "3", "--model-kwargs", json.dumps(DPT_KWARGS))
    assert code == 0

    model.eval()
    per_image = []
    for i in range(3):
        sample = build_dataset("scenes", "test", {"image_size": 32, "test_samples": 3})[i]
        with torch.no_grad():
            pred = model(sample["image"][None])[0].numpy()  # 32 px is the net size: no resize
        per_image.append(_hand_zero_shot(pred, sample["depth"].numpy(), sample["valid"].numpy(), 80.0))
    measured = _rows(tmp_path)
    assert measured["scenes_abs_rel"] == pytest.approx(np.mean([a for a, _ in per_image]), rel=1e-4)
    assert measured["scenes_delta_error"] == pytest.approx(np.mean([d for _, d in per_image]), abs=1e-3)


def test_dpt_segmentation_single_scale_gives_the_in_memory_numbers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    kwargs = {**DPT_KWARGS, "num_classes": 13}
    model = create_model("dpt_tiny", task="segmentation", **kwargs)
    checkpoint = tmp_path / "dpt_tiny_seg.pt"
    torch.save(model.state_dict(), checkpoint)
    code = _evaluate_cli(tmp_path, "--model", "dpt_tiny", "--checkpoint", str(checkpoint), "--dataset",
                         "scenes", "--protocol", "single_scale", "--samples", "2",
                         "--model-kwargs", json.dumps(DPT_KWARGS))
    assert code == 0

    model.eval()
    confusion = np.zeros((13, 13), dtype=np.int64)
    for i in range(2):
        sample = build_dataset("scenes", "val", {"image_size": 32, "val_samples": 2})[i]
        with torch.no_grad():
            pred = model(sample["image"][None])[0].argmax(0).numpy()
        labels = sample["labels"].numpy()
        keep = labels >= 0
        np.add.at(confusion, (labels[keep], pred[keep]), 1)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    measured = _rows(tmp_path)
    iou = np.diag(confusion)[union > 0] / union[union > 0]
    pixel_accuracy = np.trace(confusion) / confusion.sum() * 100
    assert measured["pixel_accuracy_single_scale"] == pytest.approx(pixel_accuracy)
    assert measured["mean_iou_single_scale"] == pytest.approx(np.mean(iou) * 100)


@pytest.mark.parametrize("corrupt", ["truncated", "foreign"])
def test_bad_checkpoint_is_a_clear_error_and_writes_no_row(tmp_path: Path, capsys, corrupt: str) -> None:
    good = create_model("localvit_tiny", **CLASSIFIER_KWARGS)
    checkpoint = tmp_path / "bad.pth"
    if corrupt == "truncated":
        torch.save({"model": good.state_dict()}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    else:  # a valid checkpoint of another model
        torch.save(create_model("dpt_tiny", **DPT_KWARGS).state_dict(), checkpoint)
    code = _evaluate_cli(tmp_path, "--model", "localvit_tiny", "--checkpoint", str(checkpoint), "--dataset",
                         "local_shapes", "--samples", "4", "--model-kwargs", json.dumps(CLASSIFIER_KWARGS))
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot load checkpoint {checkpoint}" in err
    assert ("not a PyTorch checkpoint" if corrupt == "truncated" else "unexpected keys") in err
    assert not (tmp_path / "results").exists()


def test_unknown_dataset_and_protocol_name_the_valid_choices(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "x.pth"
    checkpoint.write_bytes(b"")
    code = _evaluate_cli(tmp_path, "--model", "localvit_tiny", "--checkpoint", str(checkpoint), "--dataset",
                         "imagenet", "--protocol", "metric")
    assert code == 2
    assert "valid protocols: classification" in capsys.readouterr().err


def test_a_model_of_the_wrong_kind_for_the_dataset_is_named_before_it_is_built(tmp_path: Path, capsys):
    checkpoint = tmp_path / "x.pth"
    checkpoint.write_bytes(b"")
    for model, dataset, expected in (
        ("dpt_tiny", "local_shapes", "evaluates classification: it needs a classification model, not 'dpt_"),
        ("localvit_tiny", "scenes", "evaluates depth: it needs a DPT model (dpt_base, "),
    ):
        assert _evaluate_cli(tmp_path, "--model", model, "--checkpoint", str(checkpoint), "--dataset",
                             dataset) == 2
        assert expected in capsys.readouterr().err


def test_every_released_checkpoint_has_a_known_protocol_for_its_datasets() -> None:
    from lvit.evaluate import DATASET_PROTOCOLS, result_experiment

    for released in RELEASED_CHECKPOINTS:
        for dataset in released.datasets:
            assert released.protocol in DATASET_PROTOCOLS[dataset]
            assert result_experiment(dataset, released.protocol) == released.experiment


# --------------------------------------------------- real datasets: protocols on fixture trees, fake models


class ConstantDepth(nn.Module):
    """A 'depth model' whose output is ``value`` everywhere: alignment then has det = 0 (s = t = 0)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.inputs: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(tuple(x.shape))
        return torch.full((x.shape[0], *x.shape[-2:]), self.value)


def _write_nyu(root: Path) -> None:
    """Two 480x640 test images: 2 m, a 12 m block (beyond the cap), 4 m rows outside the Eigen crop."""
    root.mkdir(parents=True)
    depths = np.full((2, 640, 480), 2.0, dtype=np.float32)  # MATLAB column-major: (N, W, H)
    depths[:, 100:200, 100:200] = 12.0
    depths[:, :, :20] = 4.0  # rows 0..19: outside the Eigen crop (rows 45..470)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = np.full((2, 3, 640, 480), 100, dtype=np.uint8)
        f["rawDepths"] = f["depths"] = depths
        f["labels"] = np.zeros((2, 640, 480), dtype=np.uint16)
    savemat(root / "splits.mat", {"trainNdxs": np.array([[1]]), "testNdxs": np.array([[1], [2]])})


def test_nyu_zero_shot_caps_at_10m_without_crop_and_metric_uses_eigen_crop(tmp_path: Path) -> None:
    _write_nyu(tmp_path / "nyu")
    data, split = build_eval_dataset("nyu", "zero_shot", tmp_path, EvalOptions())
    model = ConstantDepth(1.0)
    measured = run_protocol(model, "nyu", "zero_shot", data, CPU, EvalOptions(net_size=64))
    assert split == "test" and len(data) == 2
    assert model.inputs[0] == (1, 3, 64, 96)  # "minimal" resize of 480x640 towards 64, multiples of 32
    # s = t = 0 -> disparity clamped at 1/10 -> 10 m everywhere; valid: 0 < d < 10, no crop.
    valid = np.full((480, 640), True)
    valid[100:200, 100:200] = False
    gt = np.where(np.arange(480)[:, None] < 20, 4.0, 2.0) * np.ones((1, 640))
    assert measured["nyu_abs_rel"] == pytest.approx(np.mean(np.abs(10 - gt[valid]) / gt[valid]))
    assert measured["nyu_delta_error"] == pytest.approx(100.0)

    spec = METRIC_DEPTH["nyu"]
    output = 500.0  # depth = 1 / (0.000305 * 500 + 0.1378) = 3.4423... m, through a x1000 uint16 PNG
    expected_pred = math.floor(1000 / (spec.scale * output + spec.shift)) / 1000
    data, _ = build_eval_dataset("nyu", "metric", tmp_path, EvalOptions())
    measured = run_protocol(ConstantDepth(output), "nyu", "metric", data, CPU, EvalOptions())
    # Eigen crop: only the 2 m pixels count (the 4 m rows lie outside it, the 12 m block beyond 10 m).
    assert measured["abs_rel"] == pytest.approx(abs(expected_pred - 2.0) / 2.0)
    assert measured["d1"] == 0.0 and measured["d3"] == 1.0  # ratio 1.72: > 1.25, > 1.5625, < 1.953
    assert measured["log10"] == pytest.approx(abs(math.log10(expected_pred / 2.0)))


def _write_kitti(root: Path) -> None:
    rgb = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000005.png"
    gt = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000005.png"
    (root / "raw" / rgb).parent.mkdir(parents=True)
    Image.fromarray(np.full((375, 1242, 3), 90, dtype=np.uint8)).save(root / "raw" / rgb)
    depth = np.zeros((375, 1242), dtype=np.uint16)
    depth[300, 600] = 20 * 256  # inside the Garg crop (rows 153..370, cols 44..1196 of the full frame)
    depth[200, 1000] = 25 * 256  # inside too
    depth[40, 600] = 10 * 256  # inside the KB crop (rows 23..374), above the Garg crop
    depth[300, 1220] = 5 * 256  # inside the KB crop (cols 13..1228), right of the Garg crop
    (root / "depth" / gt).parent.mkdir(parents=True)
    Image.fromarray(depth).save(root / "depth" / gt)
    (root / "splits").mkdir()
    (root / "splits" / "eigen_test_files_with_gt.txt").write_text(f"{rgb} {gt} 721.5377\n")


def test_kitti_zero_shot_on_kb_crop_and_metric_with_garg_crop_on_full_frame(tmp_path: Path) -> None:
    _write_kitti(tmp_path / "kitti")
    data, _ = build_eval_dataset("kitti", "zero_shot", tmp_path, EvalOptions())
    model = ConstantDepth(1.0)
    measured = run_protocol(model, "kitti", "zero_shot", data, CPU, EvalOptions(net_size=64))
    assert model.inputs[0] == (1, 3, 64, 224)  # KB crop 352x1216 resized towards 64
    gt = np.array([20.0, 25.0, 10.0, 5.0])  # all four points in the KB crop count; prediction: the 80 m cap
    assert measured["kitti_abs_rel"] == pytest.approx(np.mean(np.abs(80 - gt) / gt))

    spec = METRIC_DEPTH["kitti"]
    output = 700.0  # depth = 1 / (0.00006016 * 700 + 0.00579) ~ 20.92 m through a x256 uint16 PNG
    pred = math.floor(256 / (spec.scale * output + spec.shift)) / 256
    data, _ = build_eval_dataset("kitti", "metric", tmp_path, EvalOptions())
    model = ConstantDepth(output)
    measured = run_protocol(model, "kitti", "metric", data, CPU, EvalOptions())
    assert model.inputs[0] == (1, 3, 352, 1216)  # the network sees the KB crop at its own size
    gt = np.array([20.0, 25.0])  # the Garg crop of the full frame keeps these two
    assert measured["abs_rel"] == pytest.approx(np.mean(np.abs(pred - gt) / gt))
    assert measured["rmse"] == pytest.approx(np.sqrt(np.mean((pred - gt) ** 2)))
    assert measured["d1"] == 1.0


class ChannelLogits(nn.Module):
    """A 'segmentation model' whose logits are its input's channels (3 classes): class = brightest channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _write_ade(root: Path) -> None:
    images, annotations = root / "images" / "validation", root / "annotations" / "validation"
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 1] = 200  # green everywhere: the fake model predicts class index 1 (ADE label 2)
    Image.fromarray(rgb).save(images / "ADE_val_00000001.jpg", quality=100)
    labels = np.full((20, 30), 2, dtype=np.uint8)  # 600 pixels: 240 of label 2 (correct) ...
    labels[10:] = 3  # ... 240 of label 3 (wrong) ...
    labels[:, :6] = 0  # ... and 120 unlabelled ("other" = ignore), 60 from each half
    Image.fromarray(labels).save(annotations / "ADE_val_00000001.png")


@pytest.mark.parametrize("protocol", ["single_scale", "ms_flip"])
def test_ade20k_ignores_label_zero_and_pools_iou(tmp_path: Path, protocol: str) -> None:
    _write_ade(tmp_path / "ADEChallengeData2016")
    data, split = build_eval_dataset("ade20k", protocol, tmp_path, EvalOptions())
    measured = run_protocol(ChannelLogits(), "ade20k", protocol, data, CPU, EvalOptions(net_size=32))
    suffix = "_single_scale" if protocol == "single_scale" else ""
    # 240 correct of 480 labelled; IoU(class 1) = 240 / 480, IoU(class 2) = 0 / 240.
    assert measured[f"pixel_accuracy{suffix}"] == pytest.approx(50.0)
    assert measured[f"mean_iou{suffix}"] == pytest.approx(25.0)


def test_ms_flip_of_a_constant_image_sums_six_scales_of_both_flips() -> None:
    image = torch.tensor([0.2, 0.6, 0.9])[:, None, None].expand(3, 20, 44)
    logits = ms_flip_logits(ChannelLogits(), image, crop=32, normalized=False)
    # Every scale, window and flip sees the constant; sliding-window overlaps average; 6 scales x 2 flips.
    assert logits.shape == (1, 3, 20, 44)
    assert torch.allclose(logits[0], 12 * image, atol=1e-5)
    normalized = ms_flip_logits(ChannelLogits(), image, crop=32, normalized=True)
    assert torch.allclose(normalized[0], 12 * (image - 0.5) / 0.5, atol=1e-5)


def _write_imagenet(root: Path) -> None:
    for index, channel in enumerate((0, 1, 2, 0, 1)):  # five classes; the last two look like the first two
        rgb = np.zeros((40, 60, 3), dtype=np.uint8)
        rgb[..., channel] = 255
        (root / "imagenet" / "val" / f"n{index:08d}").mkdir(parents=True)
        Image.fromarray(rgb).save(root / "imagenet" / "val" / f"n{index:08d}" / "img.png")


class MeanColour(nn.Module):
    """Logits = mean of each normalised channel, then two constant classes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3))
        return torch.cat([means, torch.full((len(x), 2), -10.0)], dim=1)


def test_imagenet_deit_eval_transform_top1_top5_loss(tmp_path: Path) -> None:
    _write_imagenet(tmp_path)
    data, split = build_eval_dataset("imagenet", "classification", tmp_path, EvalOptions())
    measured = run_protocol(MeanColour(), "imagenet", "classification", data, CPU, EvalOptions(batch_size=2))
    assert split == "val"
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    losses = []
    for label, channel in enumerate((0, 1, 2, 0, 1)):
        pixel = np.eye(3)[channel]  # a pure colour survives the bicubic resize and crop
        logits = np.concatenate([(pixel - mean) / std, [-10.0, -10.0]])
        losses.append(np.log(np.exp(logits).sum()) - logits[label])
    assert measured["top1"] == pytest.approx(60.0)  # classes 3 and 4 are predicted as 0 and 1
    assert measured["top5"] == pytest.approx(100.0)
    assert measured["loss"] == pytest.approx(np.mean(losses), rel=1e-4)


def test_diw_whdr_counts_disagreeing_pairs() -> None:
    image = torch.zeros(3, 32, 32)
    image[0, :, 16:] = 1.0  # right half: larger inverse depth = closer
    # (y1, x1, y2, x2, ordinal): -1 = point 1 closer. Two agree with the image, one disagrees.
    pairs = torch.tensor([[5, 20, 5, 3, -1], [7, 2, 9, 30, 1], [4, 4, 4, 25, -1]])
    dataset = [{"image": image, "pairs": pairs}]

    class RedInverseDepth(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0]

    measured = evaluate_zero_shot(RedInverseDepth(), dataset, CPU, "diw", 32, normalized=False, depth_cap=1.0)
    assert measured == {"diw_whdr": pytest.approx(100 / 3)}


def test_released_table_lines_up_measured_rows_and_gives_commands_for_missing(tmp_path: Path) -> None:
    from lvit.evaluate import released_table
    from lvit.results import append_results, provenance

    prov = provenance("pretrained", 0, "cpu", {}, "2026-01-01T00:00:00", 1.0, checkpoint_sha256="ab" * 32)
    append_results(tmp_path, "pretrained", "pretrained_localvit_imagenet",
                   [{**prov, "row": "localvit_t.pth", "metric": "top1", "value": 74.5, "split": "val",
                     "epoch": None}])
    table = released_table(tmp_path).set_index(["checkpoint", "metric"])
    measured = table.loc[("localvit_t.pth", "top1")]
    assert measured["expected"] == 74.838 and measured["delta"] == pytest.approx(74.5 - 74.838)
    assert measured["command"] == ""
    missing = table.loc[("dpt_hybrid_kitti-cb926ef4.pt", "rmse")]
    assert np.isnan(missing["measured"]) and missing["expected"] == 2.575
    assert missing["command"] == ("lvit evaluate --model dpt_hybrid --checkpoint "
                                  "checkpoints/dpt_hybrid_kitti-cb926ef4.pt --dataset kitti --data-root data "
                                  "--protocol metric")
    tum = table.loc[("dpt_large-midas-2f21e586.pt", "tum_delta_error"), "command"]
    assert tum.endswith("--dataset tum --data-root data")  # one protocol only: none spelled out
    assert "not build" in table.loc[("localvit_swin.pth", "top1"), "command"]


def test_cli_on_a_real_layout_marks_a_partial_run_in_the_row(tmp_path: Path) -> None:
    _write_nyu(tmp_path / "nyu")
    checkpoint = tmp_path / "dpt_tiny_depth.pt"
    torch.save(create_model("dpt_tiny", task="depth", **DPT_KWARGS).state_dict(), checkpoint)
    code = _evaluate_cli(tmp_path, "--model", "dpt_tiny", "--checkpoint", str(checkpoint), "--dataset", "nyu",
                         "--data-root", str(tmp_path), "--net-size", "64", "--limit", "1",
                         "--model-kwargs", json.dumps(DPT_KWARGS))
    assert code == 0
    df = load_results(tmp_path / "results", profile="pretrained")
    assert set(df["experiment"]) == {"pretrained_dpt_zero_shot"}
    assert set(df["row"]) == {"dpt_tiny_depth.pt [first 1] [net 64]"}  # not the file's full-protocol row
    assert set(df["metric"]) == {"nyu_abs_rel", "nyu_delta_error", "nyu_rmse"}


def test_a_val_set_missing_class_folders_is_refused_before_it_is_scored(tmp_path: Path) -> None:
    _write_imagenet(tmp_path)  # five class folders
    data, _ = build_eval_dataset("imagenet", "classification", tmp_path, EvalOptions(limit=3))
    thousand = MeanColour()
    thousand.num_classes = 1000  # a release file's model: its labels would not be these folders' indices
    with pytest.raises(ValueError, match="has 5 class folders but the model predicts 1000 classes"):
        run_protocol(thousand, "imagenet", "classification", data, CPU, EvalOptions(batch_size=2))
    five = MeanColour()
    five.num_classes = 5
    measured = run_protocol(five, "imagenet", "classification", data, CPU, EvalOptions(batch_size=2))
    assert measured["top5"] == 100


@pytest.mark.parametrize("dataset, protocol, options, marks", [
    ("nyu", "zero_shot", EvalOptions(), ""),
    ("nyu", "zero_shot", EvalOptions(depth_cap=10.0, net_size=384), ""),  # the protocol's own values
    ("nyu", "zero_shot", EvalOptions(depth_cap=80.0, limit=5), " [first 5] [cap 80 m]"),
    ("eth3d", "zero_shot", EvalOptions(net_size=512), " [net 512]"),
    ("diw", "zero_shot", EvalOptions(depth_cap=5.0), ""),  # WHDR has no depth to cap
    ("ade20k", "ms_flip", EvalOptions(net_size=480, depth_cap=3.0), ""),  # no cap in segmentation
    ("ade20k", "single_scale", EvalOptions(net_size=520), " [net 520]"),
    ("nyu", "metric", EvalOptions(net_size=512), ""),  # the metric protocol runs at the image's own size
    ("scenes", "zero_shot", EvalOptions(net_size=64, depth_cap=9.0), ""),  # procedural: no published protocol
])
def test_a_row_off_the_published_protocol_is_marked(dataset, protocol, options, marks) -> None:
    from lvit.evaluate import protocol_departures

    assert protocol_departures(dataset, protocol, options) == marks


def test_depth_cap_must_be_positive() -> None:
    from lvit.evaluate import zero_shot_cap

    with pytest.raises(ValueError, match="--depth-cap must be positive, got 0"):
        zero_shot_cap("nyu", EvalOptions(depth_cap=0.0))
