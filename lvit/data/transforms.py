"""The papers' train and eval transforms.

- LocalViT / DeiT (localvit.md §3): train = timm ``create_transform``, the recipe's RandAugment
  (``rand-m9-mstd0.5-inc1`` at paper), bicubic, colour jitter 0.4 (ignored by timm once AA is set);
  eval = Resize(size / 0.875 = 256, bicubic) -> CenterCrop(224) -> ImageNet mean/std. Random erasing
  (p=0.25, pixel mode, count 1), Mixup/CutMix and repeated augmentation act on batches and live in the
  engine, as at every profile.
- DPT depth (dpt.md §2.8, §5.1): eval resizes keeping the aspect ratio, each side a multiple of 32 ("minimal"
  = the scale factor closer to 1), bicubic, mean = std = 0.5; train resizes the longer side to 384, takes a
  random square 384 crop and a random horizontal flip; validation during training on images of many sizes
  (the ablation mix) takes the shorter side to the training size and the centre square.
- DPT segmentation (dpt.md §5.3, PyTorch-Encoding ``_sync_transform``): random mirror, longer side random in
  [0.5, 2.0] x 520 (bicubic image, nearest mask), pad to 480 (mask with ignore), random 480 crop; validation
  during training (PyTorch-Encoding ``_val_sync_transform``): shorter side to 480, centre 480 crop.

Dense transforms act on tensors: image float (3, H, W) in [0, 1], depth / mask (H, W).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import RandAugment, posterize
from torch.utils.data import Dataset
from torchvision import transforms as T

DPT_MEAN = (0.5, 0.5, 0.5)
DPT_STD = (0.5, 0.5, 0.5)
SEG_IGNORE_INDEX = -1


def deit_train_transform(image_size: int, randaugment: str | None) -> T.Compose:
    """DeiT's per-image training augmentation (timm), as LocalViT's ``main.py`` builds it, with the recipe's
    RandAugment config (None: none). Its random erasing is left to the engine's batch step
    (``lvit.engine.augment``), which every profile uses, so images are erased once."""
    transform = create_transform(
        input_size=image_size,
        is_training=True,
        color_jitter=0.4,
        auto_augment=randaugment,
        interpolation="bicubic",
    )
    for step in transform.transforms:
        if isinstance(step, RandAugment):
            _install_zero_bits_posterize(step)
    return transform


def _posterize_zero_bits_black(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's ``posterize``, except that keeping 0 bits gives a black image instead of an error.

    With ``mstd0.5`` a RandAugment magnitude is sometimes clipped to 10, where timm's PosterizeIncreasing
    keeps 0 bits. Pillow < 13 masked every value with ``~(2**8 - 1)`` (a black image), which is what DeiT
    trained with; Pillow 13 raises ``ValueError`` instead, about once per thousand training images.
    """
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return posterize(img, bits_to_keep, **kwargs)


def _install_zero_bits_posterize(augment: RandAugment) -> None:
    # Only this transform's ops are changed: timm's module (shared by every other user) stays as it is.
    for op in augment.ops:
        if op.aug_fn is posterize:
            op.aug_fn = _posterize_zero_bits_black


def deit_eval_transform(image_size: int = 224) -> T.Compose:
    """Resize(image_size / 0.875, bicubic) -> CenterCrop(image_size) -> ImageNet normalisation."""
    return T.Compose(
        [
            T.Resize(int(image_size / 0.875), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )


def normalize(
    image: torch.Tensor, mean: tuple[float, ...] = DPT_MEAN, std: tuple[float, ...] = DPT_STD
) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=image.device).view(-1, 1, 1)
    std_t = torch.tensor(std, device=image.device).view(-1, 1, 1)
    return (image - mean_t) / std_t


class NormalizedImages(Dataset):
    """A procedural dataset whose images come out normalised as the paper's pipeline normalises real ones.

    DeiT feeds ImageNet-normalised images, DPT mean = std = 0.5 (``localvit.md`` §3, ``dpt.md`` §2.8); the
    procedural sets render images in [0, 1], so without this the proxy would differ from the paper in
    logic, not only in size. Samples are ``(image, ...)`` tuples or dicts with an ``"image"``; batches from
    ``generate`` are normalised on the device they are rendered on. Other attributes pass through.
    """

    def __init__(self, dataset: Dataset, mean: Sequence[float], std: Sequence[float]) -> None:
        self.dataset, self.mean, self.std = dataset, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "mean", "std"):  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _normalized(self, sample: Any) -> Any:
        if isinstance(sample, Mapping):
            return {**sample, "image": normalize(sample["image"], self.mean, self.std)}
        return (normalize(sample[0], self.mean, self.std), *sample[1:])

    def __getitem__(self, index: int) -> Any:
        return self._normalized(self.dataset[index])

    def generate(self, indices: Any, device: torch.device | str = "cpu", **kwargs: Any) -> Any:
        return self._normalized(self.dataset.generate(indices, device, **kwargs))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"NormalizedImages({self.dataset!r}, mean={self.mean}, std={self.std})"


def dpt_resize_shape(height: int, width: int, target: int = 384, multiple: int = 32) -> tuple[int, int]:
    """DPT ``Resize(keep_aspect_ratio=True, ensure_multiple_of=32, resize_method="minimal")`` output size.

    "minimal" scales both sides by whichever of target/height, target/width is closer to 1, so the image
    changes as little as possible while one side reaches the target; each side is then rounded to the
    nearest multiple of 32 (never below one multiple).
    """
    scale_h, scale_w = target / height, target / width
    scale = scale_h if abs(1 - scale_h) < abs(1 - scale_w) else scale_w

    def snap(x: float) -> int:
        return max(multiple, int(round(x / multiple)) * multiple)

    return snap(scale * height), snap(scale * width)


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def _resize_nearest(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].to(target.dtype)


def dpt_eval_transform(image: torch.Tensor, target: int = 384) -> torch.Tensor:
    """DPT inference input: keep-aspect resize to multiples of 32 (bicubic), mean = std = 0.5."""
    return normalize(_resize_image(image, dpt_resize_shape(image.shape[-2], image.shape[-1], target)))


def depth_train_transform(
    image: torch.Tensor,
    depth: torch.Tensor,
    valid: torch.Tensor,
    size: int = 384,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MiDaS/DPT training crop: longer side to ``size``, random square ``size`` crop, random h-flip."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    new_hw = (max(size, round(height * scale)), max(size, round(width * scale)))
    image = _resize_image(image, new_hw)
    depth, valid = _resize_nearest(depth, new_hw), _resize_nearest(valid, new_hw)
    top = int(torch.randint(new_hw[0] - size + 1, (1,), generator=generator))
    left = int(torch.randint(new_hw[1] - size + 1, (1,), generator=generator))
    crop = (..., slice(top, top + size), slice(left, left + size))
    image, depth, valid = image[crop], depth[crop], valid[crop]
    if float(torch.rand(1, generator=generator)) < 0.5:
        image, depth, valid = image.flip(-1), depth.flip(-1), valid.flip(-1)
    return normalize(image), depth, valid


def segmentation_train_transform(
    image: torch.Tensor,
    mask: torch.Tensor,
    base_size: int = 520,
    crop_size: int = 480,
    scale_range: tuple[float, float] = (0.5, 2.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch-Encoding ``_sync_transform``: mirror, random long-side rescale, pad, random crop."""
    if float(torch.rand(1, generator=generator)) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    low, high = scale_range
    long_side = int(base_size * (low + (high - low) * float(torch.rand(1, generator=generator))))
    height, width = image.shape[-2:]
    scale = long_side / max(height, width)
    new_hw = (max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5)))
    image, mask = _resize_image(image, new_hw), _resize_nearest(mask, new_hw)
    pad_h, pad_w = max(0, crop_size - new_hw[0]), max(0, crop_size - new_hw[1])
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=SEG_IGNORE_INDEX)
    top = int(torch.randint(image.shape[-2] - crop_size + 1, (1,), generator=generator))
    left = int(torch.randint(image.shape[-1] - crop_size + 1, (1,), generator=generator))
    crop = (..., slice(top, top + crop_size), slice(left, left + crop_size))
    return normalize(image[crop]), mask[crop]


def _shorter_side_centre_crop(
    image: torch.Tensor, targets: tuple[torch.Tensor, ...], size: int
) -> tuple[torch.Tensor, ...]:
    """Shorter side to ``size`` (bicubic image, nearest targets), centre ``size`` square crop, mean = std =
    0.5: ``(image, *targets)``. Deterministic, and every sample comes out one size, so loops batch them."""
    height, width = image.shape[-2:]
    new_hw = (size, int(width * size / height)) if width > height else (int(height * size / width), size)
    image = _resize_image(image, new_hw)
    top, left = round((new_hw[0] - size) / 2), round((new_hw[1] - size) / 2)
    crop = (..., slice(top, top + size), slice(left, left + size))
    return normalize(image[crop]), *(_resize_nearest(t, new_hw)[crop] for t in targets)


def segmentation_val_transform(
    image: torch.Tensor, mask: torch.Tensor, crop_size: int = 480
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch-Encoding ``_val_sync_transform``: shorter side to ``crop_size`` (bicubic image, nearest mask),
    centre ``crop_size`` square crop, mean = std = 0.5."""
    return _shorter_side_centre_crop(image, (mask,), crop_size)  # type: ignore[return-value]


def depth_val_transform(
    image: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, size: int = 384
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validation of a depth training whose images differ in size (DPT's ablation mix): as the segmentation
    validation, shorter side to ``size`` and the centre square; depth and mask resized nearest."""
    return _shorter_side_centre_crop(image, (depth, valid), size)  # type: ignore[return-value]
