"""Vectorised batch random erasing: timm's pixel-mode, one-box semantics without a per-image loop."""

import math

import pytest
import torch
from timm.data.random_erasing import RandomErasing

from lvit.engine.augment import BatchRandomErasing, random_erase_batch
from lvit.engine.tasks import ClassificationTask

# A constant background: N(0, 1) noise never lands exactly on it, so "changed" means "erased".
BACKGROUND = 7.0


def _batch(n: int, size: int = 32) -> torch.Tensor:
    return torch.full((n, 3, size, size), BACKGROUND)


def _boxes(images: torch.Tensor, erased: torch.Tensor) -> list[tuple[int, int] | None]:
    """(h, w) of each image's erased region, asserting it is one filled rectangle, alike in all channels."""
    boxes: list[tuple[int, int] | None] = []
    for before, after in zip(images, erased, strict=True):
        changed = after != before
        assert torch.equal(changed, changed[:1].expand_as(changed)), "channels erased at different places"
        plane = changed[0]
        if not plane.any():
            boxes.append(None)
            continue
        rows, cols = plane.any(1).nonzero().flatten(), plane.any(0).nonzero().flatten()
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert int(plane.sum()) == (r1 - r0) * (c1 - c0), "erased pixels do not fill their bounding box"
        boxes.append((r1 - r0, c1 - c0))
    return boxes


def _mean_fraction(boxes: list[tuple[int, int]], images: torch.Tensor) -> float:
    return sum(h * w for h, w in boxes) / len(boxes) / images[0, 0].numel()


def test_probability_zero_is_identity():
    images = torch.randn(16, 3, 24, 24)
    assert torch.equal(random_erase_batch(images, 0.0), images)


def test_probability_one_erases_one_rectangle_per_image():
    images = _batch(64)
    boxes = _boxes(images, random_erase_batch(images, 1.0, generator=torch.Generator().manual_seed(0)))
    assert all(box is not None for box in boxes)


def test_area_and_aspect_within_bounds():
    size = 64
    images = _batch(400, size)
    boxes = _boxes(images, random_erase_batch(images, 1.0, generator=torch.Generator().manual_seed(1)))
    assert all(b is not None for b in boxes)
    area = size * size
    # h and w are rounded to integers (as in timm), so each may be off by 0.5 from a box inside the bounds.
    for h, w in boxes:
        assert (h + 0.5) * (w + 0.5) >= 0.02 * area and (h - 0.5) * (w - 0.5) <= area / 3
        assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
    # And the whole range is drawn from, not a corner of it.
    fractions = [h * w / area for h, w in boxes]
    ratios = [math.log(h / w) for h, w in boxes]
    assert min(fractions) < 0.05 and max(fractions) > 0.28
    assert min(ratios) < math.log(0.5) and max(ratios) > math.log(2.0)


def test_erased_fraction_matches_probability():
    images = _batch(2000, 16)
    erased = random_erase_batch(images, 0.25, generator=torch.Generator().manual_seed(2))
    fraction = (erased != images).flatten(1).any(1).float().mean().item()
    assert abs(fraction - 0.25) <= 0.04


def test_mean_area_matches_timm():
    torch.manual_seed(3)
    images = _batch(2000)
    ours = [b for b in _boxes(images, random_erase_batch(images, 1.0)) if b is not None]
    reference = RandomErasing(probability=1.0, mode="pixel", max_count=1, device="cpu")
    theirs = [b for b in _boxes(images, reference(images.clone())) if b is not None]
    assert abs(_mean_fraction(ours, images) - _mean_fraction(theirs, images)) < 0.015


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_shape_memory_format_and_input_untouched(dtype):
    images = torch.randn(8, 3, 20, 20, dtype=dtype).contiguous(memory_format=torch.channels_last)
    original = images.clone()
    erased = random_erase_batch(images, 1.0)
    assert erased.dtype == dtype and erased.shape == images.shape
    assert erased.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, original), "input modified in place"
    assert not torch.equal(erased, images)
    plain = random_erase_batch(images.contiguous(), 1.0)
    assert plain.is_contiguous()


def test_same_seed_same_output():
    images = torch.randn(32, 3, 16, 16)
    erase = BatchRandomErasing(0.5)
    a = erase(images, torch.Generator().manual_seed(4))
    b = erase(images, torch.Generator().manual_seed(4))
    c = erase(images, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Without a generator the global torch RNG is used, so the loop's seeding applies.
    torch.manual_seed(6)
    d = erase(images)
    torch.manual_seed(6)
    assert torch.equal(d, erase(images))


def test_classification_task_erases_only_in_training():
    task = ClassificationTask(dict(lr=1e-3, num_classes=4, random_erasing=1.0))
    images, labels = _batch(4, 16), torch.arange(4)
    train_images, _ = task.prepare_batch((images, labels), training=True)
    assert all(box is not None for box in _boxes(images, train_images))
    eval_images, _ = task.prepare_batch((images, labels), training=False)
    assert torch.equal(eval_images, images)
    assert ClassificationTask(dict(lr=1e-3, num_classes=4, random_erasing=0.0)).erasing is None
