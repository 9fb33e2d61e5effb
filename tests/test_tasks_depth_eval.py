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


def test_an_image_without_valid_pixels_does_not_pull_the_mean_down():
    # Image 0 predicts 1/gt exactly (AbsRel 0 after alignment); image 1 predicts a non-affine inverse depth
    # (AbsRel > 0); image 2 has no valid pixel and must be skipped, so the mean is (0 + AbsRel_1) / 2.
    depth = torch.tensor([[[1.0, 2.0], [4.0, 4.0]]] * 3)
    valid = torch.ones(3, 2, 2, dtype=torch.bool)
    valid[2] = False
    inverse = torch.stack([1 / depth[0], torch.tensor([[1.0, 1.0], [1.0, 0.5]]), 1 / depth[0]])
    images = torch.arange(3.0)[:, None, None, None].expand(3, 3, 2, 2).contiguous()
    dataset = [dict(image=images[i], depth=depth[i], valid=valid[i]) for i in range(3)]
    task = DepthTask(dict(depth_cap=10.0))
    model = ConstantInverseDepth(inverse)
    both = task.evaluate(model, dataset, torch.device("cpu"), batch_size=3)
    second_alone = task.evaluate(model, dataset[1:2], torch.device("cpu"), batch_size=1)
    assert second_alone["abs_rel"] > 0.01
    # mean over images 0 and 1 only: (0 + abs_rel_1) / 2, not / 3
    assert abs(both["abs_rel"] - second_alone["abs_rel"] / 2) < 1e-6
