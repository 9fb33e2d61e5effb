"""Hand-checked tests of the papers' losses (lvit.engine.losses)."""

import math

import torch

from lvit.engine.losses import (
    gradient_matching,
    normalize_median_mad,
    segmentation_loss,
    ssi_depth_loss,
    trimmed_mae,
)


def _ones(shape):
    return torch.ones(shape, dtype=torch.bool)


def test_normalize_median_mad_by_hand():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 10.0]]])
    # median 3, mean absolute deviation (2 + 1 + 0 + 1 + 7) / 5 = 2.2
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0]) - 3) / 2.2
    torch.testing.assert_close(normalize_median_mad(x, _ones(x.shape))[0, 0], expected)


def test_normalize_ignores_masked_pixels():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 10.0, 1000.0]]])
    mask = torch.tensor([[[True] * 5 + [False]]])
    out = normalize_median_mad(x, mask)
    torch.testing.assert_close(out[0, 0, :5], (x[0, 0, :5] - 3) / 2.2)
    assert out[0, 0, 5] == 0


def test_trimmed_mae_drops_largest_twenty_percent():
    residual = torch.arange(1.0, 11.0).view(1, 2, 5)  # |r| = 1..10, one image of 10 pixels
    loss = trimmed_mae(residual, torch.zeros_like(residual), _ones(residual.shape), trim=0.2)
    # keep the 8 smallest: 1 + ... + 8 = 36, divided by 2 * 10 valid pixels
    assert math.isclose(float(loss), 36 / 20, rel_tol=1e-6)


def test_trimmed_mae_trims_per_image_and_respects_mask():
    a = torch.arange(1.0, 11.0).view(1, 2, 5)
    b = 100 * torch.ones(1, 2, 5)
    pred = torch.cat([a, b])
    mask = _ones(pred.shape)
    mask[1, 0, :] = False  # image 2 has 5 valid pixels of residual 100 -> keeps floor(0.8 * 5) = 4
    loss = trimmed_mae(pred, torch.zeros_like(pred), mask)
    assert math.isclose(float(loss), (36 + 400) / (2 * 15), rel_tol=1e-6)


def test_gradient_matching_by_hand():
    pred = torch.tensor([[[0.0, 1.0]]])
    # one x-difference of 1 over 2 valid pixels at scale 1; the single-pixel coarser scales add nothing
    assert math.isclose(
        float(gradient_matching(pred, torch.zeros_like(pred), _ones(pred.shape), scales=4)), 0.5, rel_tol=1e-6
    )


def test_gradient_matching_zero_for_constant_residual():
    target = torch.rand(2, 16, 16)
    assert float(gradient_matching(target + 3.0, target, _ones(target.shape))) == 0.0


def test_ssi_loss_zero_for_affine_prediction_and_positive_otherwise():
    torch.manual_seed(0)
    target = torch.rand(3, 16, 16) + 0.1
    mask = torch.rand(3, 16, 16) > 0.2
    assert float(ssi_depth_loss(2.5 * target + 0.7, target, mask)) < 1e-5
    assert float(ssi_depth_loss(torch.rand(3, 16, 16), target, mask)) > 0.1


def test_ssi_loss_invariant_to_scale_and_shift_of_prediction():
    torch.manual_seed(1)
    pred, target = torch.rand(2, 3, 16, 16)
    mask = _ones(pred.shape)
    base = ssi_depth_loss(pred[None], target[None], mask[None])
    torch.testing.assert_close(ssi_depth_loss(4.0 * pred[None] - 2.0, target[None], mask[None]), base)


def test_ssi_loss_ignores_outliers_within_trim():
    torch.manual_seed(2)
    target = torch.rand(1, 10, 10) + 0.5
    pred = target.clone()
    pred[0, 0, :5] = 50.0  # 5 % of pixels are wild outliers: the trimmed data term drops them
    mask = _ones(pred.shape)
    no_grad_term = ssi_depth_loss(pred, target, mask, grad_weight=0.0)
    untrimmed = ssi_depth_loss(pred, target, mask, trim=0.0, grad_weight=0.0)
    assert float(no_grad_term) < 0.5 * float(untrimmed)


def test_segmentation_loss_aux_weight_and_ignore_index():
    logits = torch.zeros(1, 4, 2, 2)  # uniform over 4 classes: CE = log 4 per labelled pixel
    target = torch.tensor([[[0, 1], [-1, 3]]])
    assert math.isclose(
        float(segmentation_loss(logits, target, logits, ignore_index=-1)), 1.2 * math.log(4), rel_tol=1e-6
    )
    confident = torch.full((1, 4, 2, 2), -100.0)
    confident[0, 0, 0, 0] = confident[0, 1, 0, 1] = confident[0, 3, 1, 1] = 100.0
    confident[0, 2, 1, 0] = 100.0  # wrong on the ignored pixel: must not count
    assert float(segmentation_loss(confident, target, ignore_index=-1)) < 1e-6
