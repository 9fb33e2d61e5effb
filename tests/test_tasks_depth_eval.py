"""DepthTask.evaluate averages per-image metrics over the images that have valid pixels."""

import torch
import torch.nn as nn

from lvit.engine.tasks import DepthTask


class ConstantInverseDepth(nn.Module):
    """Predicts the stored inverse depth of each image (selected by the image's first pixel)."""

    def __init__(self, inverse_depths: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inverse_depths", inverse_depths)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inverse_depths[images[:, 0, 0, 0].long()]


def _scenes(depth: torch.Tensor, valid: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """One scene per depth map; image i is filled with i, which is how ConstantInverseDepth picks its map."""
    images = torch.arange(float(len(depth)))[:, None, None, None].expand(len(depth), 3, 2, 2).contiguous()
    return [dict(image=images[i], depth=depth[i], valid=valid[i]) for i in range(len(depth))]


def test_an_image_without_valid_pixels_does_not_pull_the_mean_down():
    # Image 0 predicts 1/gt exactly (AbsRel 0 after alignment); image 1 predicts a non-affine inverse depth
    # (AbsRel > 0); image 2 has no valid pixel and must be skipped, so the mean is (0 + AbsRel_1) / 2.
    depth = torch.tensor([[[1.0, 2.0], [4.0, 4.0]]] * 3)
    valid = torch.ones(3, 2, 2, dtype=torch.bool)
    valid[2] = False
    inverse = torch.stack([1 / depth[0], torch.tensor([[1.0, 1.0], [1.0, 0.5]]), 1 / depth[0]])
    dataset = _scenes(depth, valid)
    task = DepthTask(dict(depth_cap=10.0))
    model = ConstantInverseDepth(inverse)
    both = task.evaluate(model, dataset, torch.device("cpu"), batch_size=3)
    second_alone = task.evaluate(model, dataset[1:2], torch.device("cpu"), batch_size=1)
    assert second_alone["abs_rel"] > 0.01
    # mean over images 0 and 1 only: (0 + abs_rel_1) / 2, not / 3
    assert abs(both["abs_rel"] - second_alone["abs_rel"] / 2) < 1e-6


def test_a_model_that_predicts_a_constant_map_is_flagged():
    import pytest

    depth = torch.tensor([[[1.0, 2.0], [4.0, 4.0]]] * 2)
    dataset = _scenes(depth, torch.ones(2, 2, 2, dtype=torch.bool))
    task = DepthTask(dict(depth_cap=10.0))
    varied = torch.stack([1 / depth[0], torch.full((2, 2), 0.5)])  # image 1 is constant, image 0 is not
    measured = task.evaluate(ConstantInverseDepth(varied), dataset, torch.device("cpu"), 2)
    assert measured["constant_fraction"] == 0.5
    dead = torch.zeros(2, 2, 2)  # a final ReLU at 0 everywhere
    with pytest.warns(RuntimeWarning, match="constant map for every image"):
        measured = task.evaluate(ConstantInverseDepth(dead), dataset, torch.device("cpu"), 2)
    assert measured["constant_fraction"] == 1.0


def test_the_untrained_model_is_judged_dead_on_the_first_validation_batch():
    depth = torch.tensor([[[1.0, 2.0], [4.0, 4.0]]] * 4)
    dataset = _scenes(depth, torch.ones(4, 2, 2, dtype=torch.bool))
    task = DepthTask(dict(depth_cap=10.0))
    # images 0 and 1 (the first batch of 2) vary; 2 and 3 are constant
    maps = torch.stack([1 / depth[0], 1 / depth[0], torch.zeros(2, 2), torch.zeros(2, 2)])
    model = ConstantInverseDepth(maps)
    assert task.init_diagnostics(model, dataset, torch.device("cpu"), 2) == {"constant_fraction": 0.0}
    assert task.evaluate(model, dataset, torch.device("cpu"), 2)["constant_fraction"] == 0.5
    dead = ConstantInverseDepth(torch.zeros(4, 2, 2))
    assert task.init_diagnostics(dead, dataset, torch.device("cpu"), 2) == {"constant_fraction": 1.0}
