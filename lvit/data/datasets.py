"""Loaders for the papers' real datasets, in their published layouts under ``data_root``.

Layouts (``data_root`` defaults to ``data/``; see ``data/README.md``):

- ImageNet: ``imagenet/{train,val}/<wnid>/*.JPEG`` (torchvision ImageFolder; val sorted into class folders).
- NYUv2: ``nyu/nyu_depth_v2_labeled.mat`` (the official labelled set, MATLAB v7.3 = HDF5) and
  ``nyu/splits.mat`` (the official toolbox's ``trainNdxs`` / ``testNdxs``, 1-based; 795 / 654 images).
  The split indices are read from the user's ``splits.mat``, not embedded here.
- KITTI: ``kitti/raw/<date>/<drive>_sync/image_02/data/*.png`` (raw sync drives),
  ``kitti/depth/[train|val/]<drive>_sync/proj_depth/groundtruth/image_02/*.png`` (annotated depth,
  uint16 / 256 metres, 0 = no LiDAR), ``kitti/splits/eigen_{train,test}_files_with_gt.txt`` (BTS format:
  ``<rgb path> <gt path or None> <focal>``).
- ADE20K: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
  ``ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = "other", 1..150 = classes).

Dense samples are dicts of tensors: ``image`` float (3, H, W) in [0, 1]; ``depth`` float (H, W) metres;
``valid`` bool (H, W) = GT present, within the evaluation cap and inside the evaluation crop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

NYU_MAX_DEPTH = 10.0
KITTI_MAX_DEPTH = 80.0
KITTI_MIN_DEPTH = 1e-3
ADE20K_NUM_CLASSES = 150
ADE20K_IGNORE_INDEX = -1


class LayoutError(FileNotFoundError):
    """A dataset root that does not hold the expected published layout."""


def _require(path: Path, layout: str) -> Path:
    if not path.exists():
        raise LayoutError(f"missing {path}; expected layout:\n{layout}")
    return path


def _require_files(
    folder: Path, pattern: str, layout: str, keep: Callable[[Path], bool] = lambda path: True
) -> list[Path]:
    """The files under ``folder`` that match ``pattern`` and ``keep``, sorted; a missing folder or no such
    file is a :class:`LayoutError` showing ``layout``."""
    files = sorted(path for path in _require(folder, layout).glob(pattern) if keep(path))
    if not files:
        raise LayoutError(f"no {pattern} in {folder}; expected layout:\n{layout}")
    return files


def _load_rgb(path: Path) -> torch.Tensor:
    """``(3, H, W)`` float32 in [0, 1]; a missing or unreadable file raises an error naming it."""
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image file not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise RuntimeError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _load_png_array(path: Path) -> np.ndarray:
    """A label or depth PNG's samples; 16-bit ones as uint16 under every Pillow the project allows."""
    try:
        with Image.open(path) as img:
            if img.mode == "I":  # older Pillow opens 16-bit grey PNGs as 32-bit "I"; PNG holds <= 16 bits
                return np.asarray(img).astype(np.uint16)
            return np.asarray(img)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"annotation file not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise RuntimeError(f"cannot read annotation {path}: {err}") from err


def _dense_sample(
    image: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, name: str
) -> dict[str, torch.Tensor]:
    """The dense sample of a real depth dataset, valid where ``valid`` says and the depth is positive and
    finite (0 elsewhere); ``name`` names the file in the error for a ground truth of another size."""
    if depth.shape != image.shape[-2:]:
        raise RuntimeError(f"{name}: ground truth {tuple(depth.shape)}, image {tuple(image.shape[1:])}")
    valid = valid & torch.isfinite(depth) & (depth > 0)
    return {"image": image, "depth": torch.where(valid, depth, torch.zeros_like(depth)), "valid": valid}


# ----------------------------------------------------------------------------------------------------------
# Evaluation crops (BTS ``eval_with_pngs.py``), as masks so images keep their size.


def eigen_crop_mask(height: int, width: int) -> torch.Tensor:
    """NYUv2 Eigen crop: rows 45:471, cols 41:601 of the 480 x 640 frame."""
    if (height, width) != (480, 640):
        raise ValueError(f"the Eigen crop is defined on 480x640 NYUv2 frames, got {height}x{width}")
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[45:471, 41:601] = True
    return mask


def garg_crop_mask(height: int, width: int) -> torch.Tensor:
    """KITTI Garg crop: rows 0.40810811 h : 0.99189189 h, cols 0.03594771 w : 0.96405229 w."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[
        int(0.40810811 * height) : int(0.99189189 * height), int(0.03594771 * width) : int(0.96405229 * width)
    ] = True
    return mask


def kb_crop(tensor: torch.Tensor) -> torch.Tensor:
    """KITTI benchmark crop: bottom 352 rows, centred 1216 columns (``--do_kb_crop``)."""
    height, width = tensor.shape[-2:]
    top, left = height - 352, (width - 1216) // 2
    return tensor[..., top : top + 352, left : left + 1216]


# ----------------------------------------------------------------------------------------------------------
# ImageNet


IMAGENET_LAYOUT = "  <data_root>/imagenet/train/<wnid>/*.JPEG\n  <data_root>/imagenet/val/<wnid>/*.JPEG"


def imagenet(data_root: str | Path, split: str, transform: Callable | None = None) -> ImageFolder:
    """ImageNet-1k as an ImageFolder over ``imagenet/{train,val}`` (DeiT transforms via ``transform``).

    When the other split has class folders too, both must hold the same ones.
    """
    if split not in ("train", "val"):
        raise ValueError(f"unknown ImageNet split {split!r}; valid splits: train, val")
    folder = _require(Path(data_root) / "imagenet" / split, IMAGENET_LAYOUT)
    try:
        dataset = ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as err:
        raise LayoutError(
            f"{folder} holds no class folders with images ({err}); expected layout:\n{IMAGENET_LAYOUT}"
        ) from err
    _require_same_classes(folder.parent, split, dataset.classes)
    return dataset


def _class_folders(folder: Path) -> list[str]:
    """The class names ImageFolder would find in ``folder`` (its sub-folders); none if it does not exist."""
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir()) if folder.is_dir() else []


def _require_same_classes(root: Path, split: str, classes: list[str]) -> None:
    """Refuse a split whose class folders differ from the other split's. ImageFolder numbers classes by their
    sorted folder names, so a class missing from one split shifts every later index and top-1 would be
    scored against wrong labels. An other split without class folders (evaluation only) is not compared."""
    other = "val" if split == "train" else "train"
    other_classes = _class_folders(root / other)
    if not other_classes or other_classes == classes:
        return
    only_here = sorted(set(classes) - set(other_classes))
    only_there = sorted(set(other_classes) - set(classes))
    raise LayoutError(
        f"{root / split} and {root / other} hold different class folders, so their class indices would not "
        f"match: only in {split}: {_some(only_here)}; only in {other}: {_some(only_there)}"
    )


def _some(names: list[str], shown: int = 10) -> str:
    return f"{names[:shown]} ({len(names)} in all)" if len(names) > shown else str(names)


# ----------------------------------------------------------------------------------------------------------
# NYUv2


NYU_LAYOUT = (
    "  <data_root>/nyu/nyu_depth_v2_labeled.mat   (official labelled set, v7.3/HDF5)\n"
    "  <data_root>/nyu/splits.mat                 (official toolbox split: trainNdxs, testNdxs, 1-based)"
)


def read_nyu_split(path: Path, split: str) -> np.ndarray:
    """0-based image indices of ``split`` from the official ``splits.mat`` (MATLAB v5 or v7.3)."""
    from scipy.io import loadmat

    key = {"train": "trainNdxs", "test": "testNdxs"}[split]
    try:
        indices = loadmat(str(path))[key]
    except NotImplementedError:  # v7.3 files are HDF5
        import h5py

        with h5py.File(path, "r") as f:
            indices = f[key][()]
    except (ValueError, OSError) as err:
        raise RuntimeError(f"cannot read NYUv2 split file {path}: {err}") from err
    return np.asarray(indices, dtype=np.int64).reshape(-1) - 1


class NYUv2(Dataset):
    """NYUv2 labelled set: RGB, depth (``rawDepths`` by default, as the MiDaS zero-shot protocol; or the
    inpainted ``depths``), 894-class ``labels`` (0 = unlabelled); ``valid`` = 0 < depth < 10 m inside the
    Eigen crop. ``split="test"`` gives the official 654 images, ``"train"`` the 795."""

    def __init__(
        self,
        data_root: str | Path = "data",
        split: str = "test",
        depth_key: str = "rawDepths",
        eigen_crop: bool = True,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"unknown NYUv2 split {split!r}; valid splits: train, test")
        if depth_key not in ("rawDepths", "depths"):
            raise ValueError(f"unknown depth_key {depth_key!r}; valid: rawDepths, depths")
        root = Path(data_root) / "nyu"
        self.mat_path = _require(root / "nyu_depth_v2_labeled.mat", NYU_LAYOUT)
        self.indices = read_nyu_split(_require(root / "splits.mat", NYU_LAYOUT), split)
        self.depth_key, self.eigen_crop = depth_key, eigen_crop
        self._file: Any = None

    def _open(self) -> Any:
        # Opened lazily so each DataLoader worker gets its own handle.
        if self._file is None:
            import h5py

            try:
                self._file = h5py.File(self.mat_path, "r")
            except OSError as err:
                raise RuntimeError(
                    f"cannot open NYUv2 file {self.mat_path} as HDF5 (v7.3 .mat): {err}"
                ) from err
            missing = [k for k in ("images", self.depth_key, "labels") if k not in self._file]
            if missing:
                raise RuntimeError(
                    f"{self.mat_path} lacks datasets {missing}; is it nyu_depth_v2_labeled.mat?"
                )
        return self._file

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        f, i = self._open(), int(self.indices[index])
        # MATLAB stores column-major: h5py sees (N, 3, W, H) images and (N, W, H) depths / labels.
        image = torch.from_numpy(np.asarray(f["images"][i], dtype=np.float32)).permute(0, 2, 1) / 255.0
        depth = torch.from_numpy(np.asarray(f[self.depth_key][i], dtype=np.float32)).t().contiguous()
        labels = torch.from_numpy(np.asarray(f["labels"][i], dtype=np.int64)).t().contiguous()
        valid = (depth > 0) & (depth < NYU_MAX_DEPTH)
        if self.eigen_crop:
            valid &= eigen_crop_mask(*depth.shape)
        return {"image": image.contiguous(), "depth": depth, "valid": valid, "labels": labels}


# ----------------------------------------------------------------------------------------------------------
# KITTI (Eigen split)


KITTI_LAYOUT = (
    "  <data_root>/kitti/raw/<date>/<drive>_sync/image_02/data/<frame>.png\n"
    "  <data_root>/kitti/depth/[train/|val/]<drive>_sync/proj_depth/groundtruth/image_02/<frame>.png\n"
    "  <data_root>/kitti/splits/eigen_{train,test}_files_with_gt.txt  (BTS format: rgb gt|None focal)"
)


class KITTIDepth(Dataset):
    """KITTI Eigen split with the annotated sparse LiDAR depth (uint16 PNG / 256 = metres, 0 = missing).

    Lines whose GT is ``None`` are skipped (Eigen test: 697 listed, 652 with GT). ``valid`` = 1e-3 < depth
    < 80 m inside the Garg crop. ``kb_crop=True`` applies the KITTI benchmark crop (bottom 352 x 1216) first.
    """

    def __init__(
        self,
        data_root: str | Path = "data",
        split: str = "test",
        garg_crop: bool = True,
        kb_crop: bool = True,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"unknown KITTI split {split!r}; valid splits: train, test")
        self.root = Path(data_root) / "kitti"
        list_file = _require(self.root / "splits" / f"eigen_{split}_files_with_gt.txt", KITTI_LAYOUT)
        self.samples: list[tuple[str, str, float]] = []
        for number, line in enumerate(list_file.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise ValueError(f"{list_file}:{number}: expected '<rgb> <gt|None> <focal>', got {line!r}")
            if fields[1] != "None":
                self.samples.append((fields[0], fields[1], float(fields[2])))
        if not self.samples:
            raise LayoutError(
                f"{list_file} lists no samples with ground truth; expected layout:\n{KITTI_LAYOUT}"
            )
        self.garg_crop, self.kb_crop = garg_crop, kb_crop

    def _gt_path(self, relative: str) -> Path:
        for sub in ("", "train", "val"):
            candidate = self.root / "depth" / sub / relative
            if candidate.exists():
                return candidate
        raise FileNotFoundError(
            f"KITTI ground-truth file not found: {self.root / 'depth' / relative} "
            f"(also looked under depth/train and depth/val)"
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb, gt, focal = self.samples[index]
        image = _load_rgb(self.root / "raw" / rgb)
        png = _load_png_array(self._gt_path(gt))
        if png.dtype != np.uint16:
            raise RuntimeError(f"KITTI depth PNG must be uint16, got {png.dtype}: {gt}")
        depth = torch.from_numpy(png.astype(np.float32) / 256.0)
        if self.kb_crop:
            image, depth = kb_crop(image), kb_crop(depth)
        valid = (depth > KITTI_MIN_DEPTH) & (depth < KITTI_MAX_DEPTH)
        if self.garg_crop:
            valid &= garg_crop_mask(*depth.shape)
        return {"image": image, "depth": depth, "valid": valid, "focal": focal}


# ----------------------------------------------------------------------------------------------------------
# ADE20K


ADE20K_LAYOUT = (
    "  <data_root>/ADEChallengeData2016/images/{training,validation}/*.jpg\n"
    "  <data_root>/ADEChallengeData2016/annotations/{training,validation}/*.png"
)


class ADE20K(Dataset):
    """ADE20K SceneParsing (150 classes). Targets follow PyTorch-Encoding / LSeg (dpt.md §6.2): raw label 0
    ("other") becomes ``-1`` (ignore), classes 1..150 become 0..149. ``transform(image, mask)`` is optional
    (e.g. ``segmentation_train_transform``)."""

    def __init__(
        self,
        data_root: str | Path = "data",
        split: str = "train",
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        folders = {"train": "training", "val": "validation"}
        if split not in folders:
            raise ValueError(f"unknown ADE20K split {split!r}; valid splits: {', '.join(folders)}")
        root = Path(data_root) / "ADEChallengeData2016"
        self.images = _require_files(root / "images" / folders[split], "*.jpg", ADE20K_LAYOUT)
        self.annotations = _require(root / "annotations" / folders[split], ADE20K_LAYOUT)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_path = self.images[index]
        image = _load_rgb(image_path)
        raw = torch.from_numpy(_load_png_array(self.annotations / f"{image_path.stem}.png").astype(np.int64))
        if raw.shape != image.shape[-2:]:
            raise RuntimeError(
                f"annotation {image_path.stem}.png is {tuple(raw.shape)}, image is {tuple(image.shape[-2:])}"
            )
        mask = raw - 1  # 0 ("other") -> -1 = ignore
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "labels": mask}
