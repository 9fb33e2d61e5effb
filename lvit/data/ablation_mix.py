"""DPT's ablation mix: ReDWeb, HRWSI and BlendedMVS (``dpt.md`` §4.4, §5.1), the training and validation data
of Table 7 (Read ablation) and Figure 4 (inference resolution) at the paper profile.

Layouts under ``data_root`` (see ``data/README.md``), as each dataset is released:

- ReDWeb V1: ``redweb/ReDWeb_V1/Imgs/<id>.jpg`` and ``redweb/ReDWeb_V1/RDs/<id>.png`` (8-bit relative
  depth, 255 = sky / no value).
- HRWSI: ``hrwsi/{train,val}/imgs/<id>.jpg``, ``hrwsi/{train,val}/gts/<id>.png`` (disparity) and
  ``hrwsi/{train,val}/valid_masks/<id>.png`` (non-zero = valid).
- BlendedMVS: ``blendedmvs/<scene>/blended_images/<id>.jpg`` (``*_masked.jpg`` are skipped),
  ``blendedmvs/<scene>/rendered_depth_maps/<id>.pfm`` (depth, 0 = none), and the release's scene lists
  ``blendedmvs/training_list.txt`` / ``validation_list.txt``.

Ground truth is relative: ReDWeb's and HRWSI's are disparities up to scale and shift, BlendedMVS's are depths
in each scene's own units. Samples follow the dense convention of :mod:`lvit.data.datasets` with ``depth`` =
1 / disparity, where the disparity is positive on every valid pixel: HRWSI's PNG value over its type's
maximum; ReDWeb's (256 − RD) / 256, since its RD maps are negative disparity (the MiDaS authors' reading,
MiDaS issue #16, which shifts and scales them to [0, 1]; the shift of 256 keeps the farthest valid pixel at
a finite depth). The training loss, aligned in disparity, is invariant to these affine choices; the scores
are not: AbsRel is measured in depth after the alignment, so the ReDWeb and HRWSI columns depend on the
shift chosen here, as they would on any other. The members are named as in ``ABLATION_DATASETS``.

DPT's validation split (≈1k images in total) was not released. Here: HRWSI's own ``val`` folder; BlendedMVS's
``validation_list.txt`` scenes (a scene-level split, because a scene's views are near-duplicates); and the
ReDWeb images whose id hashes into one twelfth (about 300 of 3,600), a split that depends on the file name
alone, so it is the same on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lvit.data.datasets import (
    LayoutError,
    _dense_sample,
    _load_png_array,
    _load_rgb,
    _require,
    _require_files,
)

ABLATION_DATASETS: tuple[str, ...] = ("redweb", "hrwsi", "blendedmvs")
SPLITS: tuple[str, ...] = ("train", "val")
REDWEB_SKY = 255
REDWEB_VAL_BUCKETS = 12  # one bucket of twelve: ~300 of ReDWeb's 3,600 images

# (image, depth, valid) -> (image, depth, valid): the training crop or the validation resize.
DepthTransform = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]

REDWEB_LAYOUT = ("  <data_root>/redweb/ReDWeb_V1/Imgs/<id>.jpg\n"
                 "  <data_root>/redweb/ReDWeb_V1/RDs/<id>.png   (8-bit relative depth, 255 = sky)")
HRWSI_LAYOUT = ("  <data_root>/hrwsi/{train,val}/imgs/<id>.jpg\n"
                "  <data_root>/hrwsi/{train,val}/gts/<id>.png          (disparity)\n"
                "  <data_root>/hrwsi/{train,val}/valid_masks/<id>.png  (non-zero = valid)")
BLENDEDMVS_LAYOUT = ("  <data_root>/blendedmvs/<scene>/blended_images/<id>.jpg\n"
                     "  <data_root>/blendedmvs/<scene>/rendered_depth_maps/<id>.pfm\n"
                     "  <data_root>/blendedmvs/{training,validation}_list.txt   (one scene id per line)")


def read_pfm(path: Path) -> np.ndarray:
    """A greyscale PFM (``Pf``) as ``(H, W)`` float32, top row first (PFM stores the bottom row first)."""
    try:
        with open(path, "rb") as handle:
            header = handle.readline().strip()
            dims = handle.readline().split()
            scale = float(handle.readline())
            data = handle.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"depth file not found: {path}") from err
    if header != b"Pf" or len(dims) != 2:
        raise RuntimeError(f"{path} is not a greyscale PFM (header {header!r}, dimensions {dims})")
    width, height = int(dims[0]), int(dims[1])
    dtype = "<f4" if scale < 0 else ">f4"  # a negative scale means little-endian
    if len(data) != 4 * width * height:
        raise RuntimeError(f"{path}: {len(data)} bytes of data for a {width}x{height} PFM")
    return np.flipud(np.frombuffer(data, dtype=dtype).reshape(height, width)).astype(np.float32)


def _inverse(disparity: torch.Tensor) -> torch.Tensor:
    """Depth of a disparity map; a disparity of 0 (no value) gives inf, which the dense sample masks."""
    return 1.0 / disparity


def _grey(array: np.ndarray) -> np.ndarray:
    """One channel of a label PNG that may have been saved as RGB."""
    return array[..., 0] if array.ndim == 3 else array


def _images(folder: Path, layout: str) -> list[Path]:
    return _require_files(folder, "*.jpg", layout, keep=lambda path: not path.stem.endswith("_masked"))


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown {name} split {split!r}; valid splits: {', '.join(SPLITS)}")


def _redweb_val(stem: str) -> bool:
    return int(hashlib.sha1(stem.encode()).hexdigest(), 16) % REDWEB_VAL_BUCKETS == 0


class _ImageFiles(Dataset):
    """A member dataset: one sample per file of ``images``."""

    images: list[Path]

    def __len__(self) -> int:
        return len(self.images)


class ReDWeb(_ImageFiles):
    """ReDWeb V1 (3,600 web stereo images); RD = 255 is invalid (sky). Split: see the module docstring."""

    def __init__(self, data_root: str | Path = "data", split: str = "train") -> None:
        _check_split("ReDWeb", split)
        self.root = Path(data_root) / "redweb" / "ReDWeb_V1"
        _require(self.root / "RDs", REDWEB_LAYOUT)
        self.images = [p for p in _images(self.root / "Imgs", REDWEB_LAYOUT)
                       if _redweb_val(p.stem) == (split == "val")]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.images[index]
        rd = _grey(_load_png_array(self.root / "RDs" / f"{path.stem}.png"))
        if rd.dtype != np.uint8:
            raise RuntimeError(f"ReDWeb RD map {path.stem}.png must be 8-bit, not {rd.dtype}")
        rd_map = torch.from_numpy(rd.astype(np.float32))
        depth = _inverse((256.0 - rd_map) / 256.0)
        return _dense_sample(_load_rgb(path), depth, rd_map != REDWEB_SKY, path.name)


class HRWSI(_ImageFiles):
    """HRWSI (20,378 train / 400 val web stereo images): disparity PNGs with valid masks."""

    def __init__(self, data_root: str | Path = "data", split: str = "train") -> None:
        _check_split("HRWSI", split)
        self.root = Path(data_root) / "hrwsi" / split
        for folder in ("gts", "valid_masks"):
            _require(self.root / folder, HRWSI_LAYOUT)
        self.images = _images(self.root / "imgs", HRWSI_LAYOUT)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.images[index]
        gt = _grey(_load_png_array(self.root / "gts" / f"{path.stem}.png"))
        if not np.issubdtype(gt.dtype, np.unsignedinteger):
            raise RuntimeError(f"HRWSI disparity {path.stem}.png must be unsigned integers, not {gt.dtype}")
        valid = torch.from_numpy(_grey(_load_png_array(self.root / "valid_masks" / f"{path.stem}.png")) > 0)
        disparity = torch.from_numpy(gt.astype(np.float32) / np.iinfo(gt.dtype).max)
        return _dense_sample(_load_rgb(path), _inverse(disparity), valid, path.name)


class BlendedMVS(_ImageFiles):
    """BlendedMVS rendered depth (PFM, 0 = no surface); scenes split by the release's list files."""

    def __init__(self, data_root: str | Path = "data", split: str = "train") -> None:
        _check_split("BlendedMVS", split)
        self.root = Path(data_root) / "blendedmvs"
        lists = {"train": "training_list.txt", "val": "validation_list.txt"}
        list_file = _require(self.root / lists[split], BLENDEDMVS_LAYOUT)
        scenes = list_file.read_text().split()
        if not scenes:
            raise LayoutError(f"{list_file} lists no scene; expected layout:\n{BLENDEDMVS_LAYOUT}")
        self.images = [p for scene in scenes for p in _images(self.root / scene / "blended_images",
                                                              BLENDEDMVS_LAYOUT)]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.images[index]
        depth = torch.from_numpy(read_pfm(path.parent.parent / "rendered_depth_maps" / f"{path.stem}.pfm"))
        return _dense_sample(_load_rgb(path), depth, torch.ones_like(depth, dtype=torch.bool), path.name)


_MEMBERS: dict[str, type[_ImageFiles]] = {"redweb": ReDWeb, "hrwsi": HRWSI, "blendedmvs": BlendedMVS}


class AblationMix(Dataset):
    """The members named in ``domains`` (default all three), each sample passed through ``transform``.

    ``balanced=True`` (training) gives the datasets equal shares, as DPT builds its mini-batches by drawing
    datasets uniformly (``dpt.md`` §5.1): index ``i`` is sample ``i // n`` (modulo its length) of member
    ``i % n``, so a shuffled epoch of ``n`` × the largest member's length sees each member equally often, the
    smaller ones repeated. Otherwise (validation) it is the plain concatenation, every image once.
    """

    def __init__(self, data_root: str | Path = "data", split: str = "train",
                 domains: Sequence[str] = ABLATION_DATASETS, transform: DepthTransform | None = None,
                 balanced: bool = False) -> None:
        unknown = sorted(set(domains) - set(_MEMBERS))
        if unknown or not domains:
            raise ValueError(f"unknown ablation-mix dataset(s) {unknown or '(none given)'}; "
                             f"valid: {', '.join(ABLATION_DATASETS)}")
        self.domains = tuple(domains)
        self.members = [_MEMBERS[name](data_root, split) for name in self.domains]
        empty = [name for name, member in zip(self.domains, self.members, strict=True) if len(member) == 0]
        if empty:
            raise LayoutError(f"the {split} split of {', '.join(empty)} holds no image under {data_root}")
        self.transform, self.balanced = transform, balanced
        self.offsets = np.cumsum([0] + [len(m) for m in self.members])

    def __len__(self) -> int:
        if self.balanced:
            return len(self.members) * max(len(m) for m in self.members)
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if self.balanced:
            member = index % len(self.members)
            return member, (index // len(self.members)) % len(self.members[member])
        member = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return member, index - int(self.offsets[member])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        member, local = self._locate(index)
        sample = self.members[member][local]
        if self.transform is not None:
            sample["image"], sample["depth"], sample["valid"] = self.transform(
                sample["image"], sample["depth"], sample["valid"])
        return sample


__all__ = ["ABLATION_DATASETS", "AblationMix", "BlendedMVS", "HRWSI", "ReDWeb", "read_pfm"]
