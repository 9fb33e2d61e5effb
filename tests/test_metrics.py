"""Metric tests against values worked out by hand (arithmetic in the comments) and basic properties."""

import math

import pytest
import torch

from lvit.metrics import (
    SegmentationMeter,
    abs_rel,
    align_scale_shift,
    delta_error,
    evaluate_zero_shot,
    mean_iou,
    pixel_accuracy,
    rmse,
    top1,
    top5,
    whdr,
)


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def test_top1_top5_by_hand():
    logits = t([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    labels = torch.tensor([1, 2, 2, 0])
    # argmax per row: 1, 0, 2, 0 -> rows 0, 2, 3 correct -> 3/4 = 75 %
    assert top1(logits, labels).item() == pytest.approx(75.0)
    # soft targets pick the class of largest weight: the same labels give the same accuracy
    assert top1(logits, torch.nn.functional.one_hot(labels, 3).float() * 0.9 + 0.033).item() == 75.0
    six = t([[6, 5, 4, 3, 2, 1], [6, 5, 4, 3, 2, 1]])
    # row 0: label 4 has rank 5 (in top-5); row 1: label 5 has rank 6 (not) -> 50 %
    assert top5(six, torch.tensor([4, 5])).item() == pytest.approx(50.0)
    with pytest.raises(ValueError, match="top-5 needs at least 5 classes"):
        top5(logits, labels)


def test_align_scale_shift_exact_affine_single_image():
    pred = t([[1.0, 2.0, 3.0, 100.0]])
    target = t([[3.0, 5.0, 7.0, -50.0]])  # 2·pred + 1 on the first three pixels
    mask = torch.tensor([[True, True, True, False]])
    aligned = align_scale_shift(pred, target, mask)
    # s = 2, t = 1 fitted on the valid pixels only; applied everywhere: 2·100 + 1 = 201
    torch.testing.assert_close(aligned, t([[3.0, 5.0, 7.0, 201.0]]))


def test_align_scale_shift_least_squares_by_hand():
    pred, target = t([[0.0, 1.0, 2.0]]), t([[0.0, 2.0, 1.0]])
    # mean p = 1, mean y = 1; Σ(p-1)(y-1) = 1 + 0 + 0 = 1; Σ(p-1)² = 2 -> s = 0.5, t = 1 - 0.5 = 0.5
    aligned = align_scale_shift(pred, target, torch.ones_like(pred, dtype=torch.bool))
    torch.testing.assert_close(aligned, t([[0.5, 1.0, 1.5]]))


def test_align_scale_shift_is_per_image_and_keeps_shape():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 4, 5, generator=gen)
    scales, shifts = t([0.5, -2.0, 3.0]), t([1.0, 0.0, -4.0])
    target = scales.view(3, 1, 1) * pred + shifts.view(3, 1, 1)
    aligned = align_scale_shift(pred, target, torch.ones_like(pred, dtype=torch.bool))
    assert aligned.shape == pred.shape
    torch.testing.assert_close(aligned, target, atol=1e-5, rtol=1e-5)


def test_align_scale_shift_singular_gives_zero():
    # one distinct valid value: det = Σp²·n − (Σp)² = 2·2 − 2² = 0 -> s = t = 0 (as in the MiDaS gist)
    pred = t([[1.0, 1.0, 5.0]])
    aligned = align_scale_shift(pred, t([[2.0, 3.0, 9.0]]), torch.tensor([[True, True, False]]))
    torch.testing.assert_close(aligned, torch.zeros_like(pred))


def test_abs_rel_averages_per_image_not_per_pixel():
    # two (1, 4) images; a 2-D tensor would be one (H, W) image
    pred = t([[[2.0, 9.0, 9.0, 9.0]], [[1.0, 2.0, 3.0, 4.0]]])
    target = t([[[1.0, 1.0, 1.0, 1.0]], [[1.0, 2.0, 3.0, 4.0]]])
    mask = torch.tensor([[[True, False, False, False]], [[True, True, True, True]]])
    # image 0: one valid pixel, |2-1|/1 = 1; image 1: perfect, 0 -> mean over images 0.5
    # (pooled over the 5 valid pixels it would be 0.2)
    assert abs_rel(pred, target, mask).item() == pytest.approx(0.5)
    torch.testing.assert_close(abs_rel(pred, target, mask, reduction="none"), t([1.0, 0.0]))


def test_delta_error_by_hand():
    pred = t([[1.0, 1.2, 1.25, 1.3, 0.5]])
    target = torch.ones_like(pred)
    # max ratios 1, 1.2, 1.25 (not > 1.25), 1.3, 2 -> 2 bad of 5 -> 40 %
    assert delta_error(pred, target, torch.ones_like(pred, dtype=torch.bool)).item() == pytest.approx(40.0)
    # a zero prediction is infinitely wrong, i.e. a bad pixel
    assert delta_error(t([[0.0, 1.0]]), t([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool)).item() == 50.0


def test_rmse_by_hand():
    pred, target = t([[1.0, 3.0, 7.0]]), t([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    # squared errors 1 and 4 on the valid pixels -> mean 2.5 -> sqrt = 1.58114
    assert rmse(pred, target, mask).item() == pytest.approx(math.sqrt(2.5))


def test_metrics_zero_on_perfect_prediction():
    depth = torch.rand(2, 6, 7, generator=torch.Generator().manual_seed(1)) + 0.5
    mask = torch.ones_like(depth, dtype=torch.bool)
    assert abs_rel(depth, depth, mask).item() == 0.0
    assert delta_error(depth, depth, mask).item() == 0.0
    assert rmse(depth, depth, mask).item() == 0.0


def test_images_without_valid_pixels_are_skipped_and_all_empty_rejected():
    pred, target = t([[[2.0, 2.0]], [[5.0, 5.0]]]), torch.ones(2, 1, 2)
    mask = torch.tensor([[[True, True]], [[False, False]]])
    assert abs_rel(pred, target, mask).item() == pytest.approx(1.0)  # image 1 has no valid pixel
    assert torch.isnan(abs_rel(pred, target, mask, reduction="none")[1])
    with pytest.raises(ValueError, match="mask is empty everywhere"):
        rmse(pred, target, torch.zeros_like(mask))


def test_zero_shot_exact_affine_inverse_depth_gives_zero_error():
    gt = t([[1.0, 2.0, 4.0, 0.0]])  # last pixel has no ground truth
    mask = gt > 0
    pred = 2.0 * torch.where(mask, 1.0 / gt, torch.zeros_like(gt)) + 3.0  # affine in disparity: 5, 4, 3.5
    result = evaluate_zero_shot(pred, gt, mask, depth_cap=10.0)
    assert set(result) == {"abs_rel", "delta_error", "rmse"}
    for value in result.values():
        assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_zero_shot_depth_cap_clamps_far_pixels():
    gt = t([[1.0, 2.0, 4.0]])
    pred = 1.0 / gt  # exact disparity; the cap of 3 m turns the 4 m pixel into 3 m
    result = evaluate_zero_shot(pred, gt, torch.ones_like(gt, dtype=torch.bool), depth_cap=3.0)
    # abs_rel = (0 + 0 + |3-4|/4) / 3 = 1/12; ratio 4/3 > 1.25 -> 1 bad of 3; rmse = sqrt(1/3)
    assert result["abs_rel"].item() == pytest.approx(1 / 12, rel=1e-5)
    assert result["delta_error"].item() == pytest.approx(100 / 3, rel=1e-5)
    assert result["rmse"].item() == pytest.approx(math.sqrt(1 / 3), rel=1e-5)


def test_zero_shot_non_affine_prediction_by_hand():
    gt = t([[1.0, 2.0, 4.0]])  # disparity y = 1, 0.5, 0.25
    pred = t([[1.0, 0.0, 0.0]])
    # mean p = 1/3, mean y = 7/12; Σ(p-p̄)(y-ȳ) = (2/3)(5/12) + (-1/3)(-1/12) + (-1/3)(-4/12) = 5/12
    # Σ(p-p̄)² = 4/9 + 1/9 + 1/9 = 2/3 -> s = 5/8, t = 7/12 - (5/8)(1/3) = 3/8
    # aligned disparity = 1, 3/8, 3/8 (above the 1/10 cap) -> depth 1, 8/3, 8/3
    # abs_rel = (0 + (2/3)/2 + (4/3)/4) / 3 = 2/9; ratios 1, 4/3, 3/2 -> 2 of 3 bad
    # rmse = sqrt((0 + 4/9 + 16/9) / 3) = sqrt(20/27)
    result = evaluate_zero_shot(pred, gt, torch.ones_like(gt, dtype=torch.bool), depth_cap=10.0)
    assert result["abs_rel"].item() == pytest.approx(2 / 9, rel=1e-5)
    assert result["delta_error"].item() == pytest.approx(200 / 3, rel=1e-5)
    assert result["rmse"].item() == pytest.approx(math.sqrt(20 / 27), rel=1e-5)


def test_zero_shot_rejects_nonpositive_depth_in_mask():
    gt = t([[0.0, 1.0]])
    with pytest.raises(ValueError, match="gt_depth <= 0"):
        evaluate_zero_shot(gt, gt, torch.ones_like(gt, dtype=torch.bool), depth_cap=10.0)


def test_whdr_by_hand():
    depth = t([[1.0, 2.0], [3.0, 4.0]])
    pairs = torch.tensor(
        [
            [0, 0, 0, 1, -1],  # 1 vs 2: predicted closer (-1), label -1 -> agrees
            [1, 1, 0, 0, 1],  # 4 vs 1: predicted farther (+1), label +1 -> agrees
            [0, 1, 1, 0, 1],  # 2 vs 3: predicted -1, label +1 -> disagrees
            [0, 0, 1, 1, 0],  # 1 vs 4: predicted -1, label 0 (equal) -> disagrees
        ]
    )
    assert whdr(depth, pairs).item() == pytest.approx(50.0)  # 2 of 4
    # inverse depth reverses the order, so the same relations come out
    assert whdr(1.0 / depth, pairs, pred_is_inverse_depth=True).item() == pytest.approx(50.0)
    # with equal_ratio 3.5 only ratios beyond 4.5 count as ordered: all four predicted 0,
    # so only the "equal" pair agrees -> 3 of 4
    assert whdr(depth, pairs, equal_ratio=3.5).item() == pytest.approx(75.0)
    torch.testing.assert_close(whdr(depth, pairs, reduction="none"), t([[0.0, 0.0, 100.0, 100.0]]))


def test_whdr_batched_pools_pairs_and_validates():
    depth = torch.stack([t([[1.0, 2.0]]), t([[2.0, 1.0]])])
    pairs = torch.tensor([[[0, 0, 0, 1, -1]], [[0, 0, 0, 1, -1]]])  # agrees, disagrees -> 50 %
    assert whdr(depth, pairs).item() == pytest.approx(50.0)
    with pytest.raises(ValueError, match="ordinal labels"):
        whdr(depth[0], torch.tensor([[0, 0, 0, 1, 2]]))


def test_segmentation_by_hand_with_ignore_index():
    target = torch.tensor([0, 0, 1, 1, -1, -1])
    pred = torch.tensor([0, 1, 1, 1, 0, 1])
    # labelled pixels 0..3: correct 0, 2, 3 -> 3/4 = 75 %
    assert pixel_accuracy(pred, target, ignore_index=-1).item() == pytest.approx(75.0)
    # class 0: inter {0}, union {0, 1} -> 50 %; class 1: inter {2, 3}, union {1, 2, 3} -> 66.67 %
    # (had the ignored pixel 4, predicted 0, counted, class 0 would be 1/3)
    assert mean_iou(pred, target, num_classes=2, ignore_index=-1).item() == pytest.approx(175 / 3)
    # a class absent from prediction and target is left out of the mean, not counted as 0
    assert mean_iou(pred, target, num_classes=3, ignore_index=-1).item() == pytest.approx(175 / 3)


def test_segmentation_meter_accumulates_over_the_set():
    meter = SegmentationMeter(num_classes=2, ignore_index=255)
    image_a = (torch.tensor([[0, 0]]), torch.tensor([[0, 0]]))  # (pred, target)
    image_b = (torch.tensor([[0, 1]]), torch.tensor([[1, 1]]))
    meter.update(*image_a)
    meter.update(*image_b)
    # per image the mIoU would be 100 and (0 + 50)/2 = 25, mean 62.5; accumulated:
    # class 0: inter 2, union 3 -> 66.67; class 1: inter 1, union 2 -> 50 -> mIoU 58.33; pixAcc 3/4
    result = meter.compute()
    assert result["mean_iou"] == pytest.approx(175 / 3)
    assert result["pixel_accuracy"] == pytest.approx(75.0)
    both_pred = torch.cat([image_a[0], image_b[0]])
    both_target = torch.cat([image_a[1], image_b[1]])
    assert mean_iou(both_pred, both_target, 2, 255).item() == pytest.approx(result["mean_iou"])


def test_segmentation_rejects_out_of_range_labels():
    meter = SegmentationMeter(num_classes=2, ignore_index=-1)
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 2\)"):
        meter.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="no labelled pixel"):
        pixel_accuracy(torch.tensor([0]), torch.tensor([-1]), ignore_index=-1)
