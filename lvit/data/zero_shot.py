"""The zero-shot test sets of DPT's Table 1 besides NYUv2 and KITTI: DIW, ETH3D, Sintel and TUM
(``dpt.md`` §4.1, §6.1), read for ``lvit evaluate`` in their released layouts under ``data_root`` (see
``data/README.md``).

- DIW: ``diw/DIW_Annotations/DIW_test.csv`` and the images it names (``./DIW_test/<id>.thumb``, relative to
  ``diw/``). The file alternates an image line and an annotation line ``y_A,x_A,y_B,x_B,rel,width,height``:
  1-based pixel coordinates in a ``width`` × ``height`` frame (the stored thumbnails' own size; a stored
  image of another size gets the coordinates rescaled to it), ``>`` = A is farther than B, ``<`` = A is
  closer (the original Lua evaluator scores ``(z_A − z_B) · label > 0`` on depth z with ``>`` as +1).
- ETH3D (high-res multi-view, training scenes): ``eth3d/<scene>/images/dslr_images/<name>.JPG`` and
  ``eth3d/<scene>/ground_truth_depth/dslr_images/<name>.JPG``, the latter a headerless little-endian float32
  raster of the image's size (6048 × 4032, every image stored landscape) in metres, +inf where there is no
  ground truth. The depth matches the distorted ``dslr_images``, not ``dslr_images_undistorted``.
- Sintel: ``sintel/training/final/<scene>/frame_<n>.png`` and ``sintel/training/depth/<scene>/frame_<n>.dpt``
  (the SDK's format: float32 tag 202021.25, int32 width, int32 height, then row-major float32 depth).
- TUM: ``tum/*.h5``, the TUM RGB-D subset with people of Li et al. (Mannequin Challenge, 1,815 frames),
  the subset MiDaS-style re-implementations evaluate on: ``/gt/img_1`` (H, W, 3) in [0, 1] and
  ``/gt/gt_depth`` (H, W) metres.

Samples are dense dicts (:mod:`lvit.data.datasets`): ``image`` (3, H, W) in [0, 1], and ``depth`` with
``valid`` = 0 < depth < ``max_depth`` (the evaluation cap, given by the caller: ``lvit evaluate`` uses 72 m
for ETH3D and Sintel and 10 m for TUM, the caps of third-party re-implementations of the MiDaS evaluation),
or DIW's ``pairs`` (1, 5) = ``(y1, x1, y2, x2, ordinal)``, 0-based, ordinal +1 when point 1 is farther
(:func:`lvit.metrics.whdr`).

What the sources leave open, decided here: Sintel uses the final pass (``render_pass="clean"`` for the
other); no occlusion or human masks; a DIW point outside its annotated frame is clamped onto the border.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from lvit.data.datasets import LayoutError, _dense_sample, _load_rgb, _require, _require_files

DIW_LAYOUT = ("  <data_root>/diw/DIW_Annotations/DIW_test.csv  (image line, then y_A,x_A,y_B,x_B,>|<,w,h)\n"
              "  <data_root>/diw/DIW_test/<id>.thumb             (the paths the csv names, relative to diw/)")
ETH3D_LAYOUT = ("  <data_root>/eth3d/<scene>/images/dslr_images/<name>.JPG\n"
                "  <data_root>/eth3d/<scene>/ground_truth_depth/dslr_images/<name>.JPG  (raw float32 depth)")
SINTEL_LAYOUT = ("  <data_root>/sintel/training/{final,clean}/<scene>/frame_<n>.png\n"
                 "  <data_root>/sintel/training/depth/<scene>/frame_<n>.dpt")
TUM_LAYOUT = "  <data_root>/tum/*.h5   (Mannequin Challenge's tum_hdf5: /gt/img_1, /gt/gt_depth)"

SINTEL_TAG = 202021.25
SINTEL_PASSES = ("final", "clean")
_DIW_ORDINAL = {">": 1, "<": -1}


def _capped_sample(
    image: torch.Tensor, depth: np.ndarray, max_depth: float, name: str
) -> dict[str, torch.Tensor]:
    """The dense sample of a depth array, valid below ``max_depth`` (and, as every dense sample, where the
    depth is positive and finite)."""
    depth_map = torch.from_numpy(np.asarray(depth, dtype=np.float32))
    return _dense_sample(image, depth_map, depth_map < max_depth, name)


class _CappedDepthFiles(Dataset):
    """A depth test set with one sample per file matching ``pattern`` under ``folder``, valid below
    ``max_depth``."""

    def __init__(self, folder: Path, pattern: str, layout: str, max_depth: float) -> None:
        if not max_depth > 0:
            raise ValueError(f"max_depth must be positive, got {max_depth}")
        self.max_depth = float(max_depth)
        self.files = _require_files(folder, pattern, layout)

    def __len__(self) -> int:
        return len(self.files)


# ----------------------------------------------------------------------------------------------------- DIW


class DIWPair(NamedTuple):
    """One DIW annotation: 0-based points in a ``height`` × ``width`` frame, ordinal +1 = point 1 farther."""

    image: str
    y1: int
    x1: int
    y2: int
    x2: int
    ordinal: int
    height: int
    width: int


def read_diw_csv(path: Path) -> list[DIWPair]:
    """The annotations of a DIW csv, one per test image."""
    lines = [line.strip() for line in _require(path, DIW_LAYOUT).read_text().splitlines() if line.strip()]
    if len(lines) % 2:
        raise ValueError(f"{path}: {len(lines)} lines; DIW alternates an image line and an annotation line")
    samples = []
    for number, (image, annotation) in enumerate(zip(lines[::2], lines[1::2], strict=True), 1):
        fields = [field.strip() for field in annotation.split(",")]
        try:
            y1, x1, y2, x2, width, height = (int(fields[i]) for i in (0, 1, 2, 3, 5, 6))
            ordinal = _DIW_ORDINAL[fields[4]]
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"{path}:{2 * number}: expected 'y_A,x_A,y_B,x_B,>|<,width,height', "
                             f"got {annotation!r}") from None
        if len(fields) != 7 or width < 1 or height < 1:
            raise ValueError(f"{path}:{2 * number}: expected 7 fields and a positive width and height, "
                             f"got {annotation!r}")
        samples.append(DIWPair(image, y1 - 1, x1 - 1, y2 - 1, x2 - 1, ordinal, height, width))
    if not samples:
        raise LayoutError(f"{path} lists no image; expected layout:\n{DIW_LAYOUT}")
    return samples


class DIW(Dataset):
    """DIW test set: one human-annotated point pair per image, scored by WHDR."""

    def __init__(self, data_root: str | Path = "data") -> None:
        self.root = Path(data_root) / "diw"
        self.samples = read_diw_csv(self.root / "DIW_Annotations" / "DIW_test.csv")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pair = self.samples[index]
        image = _load_rgb(self.root / pair.image)
        height, width = image.shape[-2:]
        rows = [_to_stored(y, pair.height, height) for y in (pair.y1, pair.y2)]
        cols = [_to_stored(x, pair.width, width) for x in (pair.x1, pair.x2)]
        return {"image": image, "pairs": torch.tensor([[rows[0], cols[0], rows[1], cols[1], pair.ordinal]])}


def _to_stored(coordinate: int, annotated: int, stored: int) -> int:
    """A 0-based pixel of an ``annotated``-pixel axis on the stored image's ``stored`` pixels, clamped."""
    return min(max(coordinate * stored // annotated, 0), stored - 1)


# --------------------------------------------------------------------------------------------------- ETH3D


class ETH3D(_CappedDepthFiles):
    """ETH3D high-res multi-view training scenes (13 scenes, 454 DSLR images), valid below ``max_depth``."""

    def __init__(self, data_root: str | Path = "data", *, max_depth: float) -> None:
        super().__init__(Path(data_root) / "eth3d", "*/images/dslr_images/*.JPG", ETH3D_LAYOUT, max_depth)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.files[index]
        gt_path = path.parents[2] / "ground_truth_depth" / "dslr_images" / path.name
        image = _load_rgb(path)
        height, width = image.shape[-2:]
        if height > width:  # the same pixel count as the raster, so only the orientation can tell
            raise RuntimeError(f"{path} is {width}x{height}, portrait: ETH3D stores every image and its "
                               "depth landscape (6048x4032); was the file rotated by its EXIF orientation?")
        try:
            raw = np.fromfile(gt_path, dtype="<f4")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"ETH3D ground-truth depth not found: {gt_path}") from err
        if raw.size != height * width:
            raise RuntimeError(f"{gt_path}: {raw.size} float32 values for a {width}x{height} image")
        return _capped_sample(image, raw.reshape(height, width), self.max_depth, path.name)


# -------------------------------------------------------------------------------------------------- Sintel


def read_sintel_depth(path: Path) -> np.ndarray:
    """A Sintel ``.dpt`` depth map as ``(H, W)`` float32."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Sintel depth file not found: {path}") from err
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != np.float32(SINTEL_TAG):
        raise RuntimeError(f"{path} is not a Sintel .dpt file (its tag is not {SINTEL_TAG})")
    width, height = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if len(data) - 12 != 4 * width * height:
        raise RuntimeError(f"{path}: {len(data) - 12} bytes of depth for a {width}x{height} map")
    # a copy: np.frombuffer's view of the file's bytes is read-only; torch.from_numpy wants writable memory
    return np.frombuffer(data[12:], "<f4").reshape(height, width).copy()


class Sintel(_CappedDepthFiles):
    """MPI Sintel training frames with depth (23 scenes, 1,064 frames), valid below ``max_depth``."""

    def __init__(
        self, data_root: str | Path = "data", *, max_depth: float, render_pass: str = "final"
    ) -> None:
        if render_pass not in SINTEL_PASSES:
            raise ValueError(f"unknown Sintel pass {render_pass!r}; valid: {', '.join(SINTEL_PASSES)}")
        self.root = Path(data_root) / "sintel" / "training"
        _require(self.root / "depth", SINTEL_LAYOUT)
        super().__init__(self.root / render_pass, "*/frame_*.png", SINTEL_LAYOUT, max_depth)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.files[index]
        depth = read_sintel_depth(self.root / "depth" / path.parent.name / f"{path.stem}.dpt")
        return _capped_sample(_load_rgb(path), depth, self.max_depth, f"{path.parent.name}/{path.name}")


# ----------------------------------------------------------------------------------------------------- TUM


class TUM(_CappedDepthFiles):
    """TUM RGB-D frames with people (Li et al.'s ``tum_hdf5``), valid below ``max_depth``."""

    def __init__(self, data_root: str | Path = "data", *, max_depth: float) -> None:
        super().__init__(Path(data_root) / "tum", "*.h5", TUM_LAYOUT, max_depth)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import h5py

        path = self.files[index]
        try:
            with h5py.File(path, "r") as f:
                rgb, depth = np.asarray(f["gt/img_1"], dtype=np.float32), np.asarray(f["gt/gt_depth"])
        except (OSError, KeyError) as err:
            raise RuntimeError(f"cannot read /gt/img_1 and /gt/gt_depth from {path}: {err}") from err
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or not ((rgb >= 0) & (rgb <= 1)).all():  # NaN fails too
            raise RuntimeError(f"{path}: /gt/img_1 must be (H, W, 3) in [0, 1], got {rgb.shape} "
                               f"in [{rgb.min(initial=0.0)}, {rgb.max(initial=0.0)}]")
        image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
        return _capped_sample(image, depth, self.max_depth, path.name)


__all__ = ["DIW", "ETH3D", "TUM", "DIWPair", "Sintel", "read_diw_csv", "read_sintel_depth"]
