"""Datasets: procedural proxies shipped as code (``synthetic``) and the papers' real datasets (``datasets``).

``build_dataset(name, split, recipe, data_root)`` is the one entry point the engine uses. Recipe keys read
(all optional except where a dataset needs them): ``image_size``, ``train_samples`` / ``val_samples`` /
``test_samples`` (sample count for the split), ``num_classes``, ``seed``, for ``local_shapes`` ``nuisance``
(:class:`~lvit.data.synthetic.LocalShapes`), for ``imagenet`` ``randaugment`` (the train transform's timm
RandAugment config; random erasing is the engine's batch step), and for ``scenes`` ``domains``
or a per-split ``{split}_domains`` (e.g. ``train_domains=("indoor", "outdoor")``,
``test_domains=("tabletop",)`` for zero-shot transfer to a held-out domain), and likewise for
``dpt_ablation_mix`` (members ``redweb``, ``hrwsi``, ``blendedmvs``; its validation serves "test" too).
Procedural images come out normalised as the paper's pipeline normalises real ones
(:class:`~lvit.data.transforms.NormalizedImages`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from lvit.data.ablation_mix import ABLATION_DATASETS, AblationMix
from lvit.data.datasets import ADE20K, KITTIDepth, NYUv2, imagenet
from lvit.data.seeding import image_hw
from lvit.data.synthetic import DOMAINS, SCENE_CLASSES, LocalShapes, Scenes
from lvit.data.transforms import (
    DPT_MEAN,
    DPT_STD,
    NormalizedImages,
    deit_eval_transform,
    deit_train_transform,
    depth_train_transform,
    depth_val_transform,
    segmentation_train_transform,
    segmentation_val_transform,
)

_DEFAULT_SAMPLES = {"train": 10_000, "val": 1_000, "test": 1_000}


def _num_samples(split: str, recipe: Mapping[str, Any]) -> int:
    return int(recipe.get(f"{split}_samples", _DEFAULT_SAMPLES[split]))


def _local_shapes(split: str, recipe: Mapping[str, Any], data_root: Path) -> Dataset:
    kwargs = {k: recipe[k] for k in ("image_size", "num_classes", "seed", "nuisance") if k in recipe}
    shapes = LocalShapes(split=split, num_samples=_num_samples(split, recipe), **kwargs)
    return NormalizedImages(shapes, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)  # as DeiT's ImageNet


def _scenes(split: str, recipe: Mapping[str, Any], data_root: Path) -> Dataset:
    domains = recipe.get(f"{split}_domains", recipe.get("domains", DOMAINS))
    kwargs = {k: recipe[k] for k in ("image_size", "seed") if k in recipe}
    scenes = Scenes(split=split, num_samples=_num_samples(split, recipe), domains=tuple(domains), **kwargs)
    return NormalizedImages(scenes, DPT_MEAN, DPT_STD)  # as DPT's dense pipelines


def _imagenet(split: str, recipe: Mapping[str, Any], data_root: Path) -> Dataset:
    size = int(recipe.get("image_size", 224))
    if split == "train":
        transform = deit_train_transform(size, recipe.get("randaugment"))
    else:
        transform = deit_eval_transform(size)
    return imagenet(data_root, "train" if split == "train" else "val", transform)


# NYUv2 and KITTI frames have one size per dataset (480 x 640; KITTI's KB crop 352 x 1216, multiples of 32),
# so both splits batch as they are; their images are normalised as DPT's dense pipelines normalise.
def _nyu(split: str, recipe: Mapping[str, Any], data_root: Path) -> Dataset:
    return NormalizedImages(NYUv2(data_root, "train" if split == "train" else "test"), DPT_MEAN, DPT_STD)


def _kitti(split: str, recipe: Mapping[str, Any], data_root: Path) -> Dataset:
    return NormalizedImages(KITTIDepth(data_root, "train" if split == "train" else "test"), DPT_MEAN, DPT_STD)


def _ade20k(split: str, recipe: Mapping[str, Any], data_root: Path) -> Dataset:
    crop = int(image_hw(recipe.get("image_size", 480))[0])
    if split == "train":
        return ADE20K(data_root, "train", partial(segmentation_train_transform, crop_size=crop))
    # The training loop evaluates in batches, so validation images must share one size: PyTorch-Encoding's
    # validation during training (shorter side to the training crop, centre crop, normalised as in training).
    # The paper's number (whole images, multi-scale + flip) is ``lvit evaluate --protocol ms_flip``'s.
    return ADE20K(data_root, "val", partial(segmentation_val_transform, crop_size=crop))


def _dpt_ablation_mix(split: str, recipe: Mapping[str, Any], data_root: Path) -> Dataset:
    # Images differ in size: training takes DPT's random square crops, validation the centre square.
    size = int(image_hw(recipe.get("image_size", 384))[0])
    domains = recipe.get(f"{split}_domains", recipe.get("domains", ABLATION_DATASETS))
    if split == "train":
        crop = partial(depth_train_transform, size=size)
        return AblationMix(data_root, "train", domains, crop, balanced=True)
    return AblationMix(data_root, "val", domains, partial(depth_val_transform, size=size))


_BUILDERS: dict[str, Callable[[str, Mapping[str, Any], Path], Dataset]] = {
    "local_shapes": _local_shapes,
    "scenes": _scenes,
    "imagenet": _imagenet,
    "nyu": _nyu,
    "kitti": _kitti,
    "ade20k": _ade20k,
    "dpt_ablation_mix": _dpt_ablation_mix,
}


def dataset_names() -> list[str]:
    return sorted(_BUILDERS)


def build_dataset(
    name: str, split: str, recipe: Mapping[str, Any] | None = None, data_root: str | Path = "data"
) -> Dataset:
    """The dataset ``name`` for ``split`` ("train", "val" or "test") configured by ``recipe``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(dataset_names())}")
    if split not in _DEFAULT_SAMPLES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(_DEFAULT_SAMPLES)}")
    return _BUILDERS[name](split, recipe or {}, Path(data_root))


__all__ = ["DOMAINS", "SCENE_CLASSES", "LocalShapes", "Scenes", "build_dataset", "dataset_names"]
