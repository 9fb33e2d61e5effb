"""The checkpoints the authors released and the numbers each should give: declared once.

Each released file is a :class:`ReleasedCheckpoint` (its lvit model, the datasets and protocol that
re-measure it) and a row of one of the ``pretrained_*`` experiments below (its published numbers).
``lvit evaluate`` writes measured rows under the result profile ``pretrained`` with the file name as the
row label; ``notebooks/pretrained.ipynb`` lines them up against these declarations.

Sources:

* LocalViT: the release ``v1.0.0`` README's expected eval output per file (``localvit.md`` §4). These are
  the README's three-decimal figures, a different fact from the paper tables' one-decimal values
  (``lvit.experiments.localvit``), so they are declared here.
* DPT zero-shot and ADE20K: the paper's Table 1 / Table 4 rows of the released models, reused from
  ``lvit.experiments.dpt``.
* DPT fine-tuned NYUv2 / KITTI: DPT ``EVALUATION.md``'s re-run of the release files with BTS
  ``eval_with_pngs.py`` (``dpt.md`` §4.2); that is the protocol ``lvit evaluate`` runs for them. The paper's
  Table 2 prints δ³ 0.994 and AbsRel 0.110 for NYUv2 where the re-run gives 0.998 and 0.109.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lvit.experiments.base import Experiment, Metric, Row, register_experiment
from lvit.experiments.dpt import dpt_segmentation, dpt_zero_shot_depth

RESULT_PROFILE = "pretrained"

LOCALVIT_RELEASE = "https://github.com/ofsoundof/LocalViT/releases/tag/v1.0.0"
DPT_RELEASE = "https://github.com/isl-org/DPT#models (README links; EVALUATION.md for the fine-tuned ones)"


@dataclass(frozen=True)
class ReleasedCheckpoint:
    file: str  # the released file name; also the result row label
    model: str  # the lvit model that loads it strictly; "" when lvit does not build the architecture
    experiment: str  # the pretrained_* experiment holding its published numbers
    datasets: tuple[str, ...]  # ``lvit evaluate --dataset`` values that re-measure it
    protocol: str  # ``lvit evaluate --protocol``
    source: str
    note: str = ""


@dataclass(frozen=True)
class MetricDepthOutput:
    """How ``run_monodepth.py`` turns a fine-tuned model's output into metres (dpt.md §2.8) and how
    EVALUATION.md scores it (BTS ``eval_with_pngs.py``, dpt.md §6.3)."""

    scale: float  # depth = 1 / (scale * output + shift)  (``invert=True``)
    shift: float
    png_factor: float  # the prediction goes through a uint16 PNG of depth * factor, as the official run
    min_depth: float
    max_depth: float
    crop: str  # "eigen" (NYUv2) or "garg" (KITTI, after the KB crop of the input)


# The fine-tuned models' output conversion is hard-coded per dataset in ``run_monodepth.py``; EVALUATION.md's
# "new" NYU model is evaluated through the same code path.
METRIC_DEPTH: Mapping[str, MetricDepthOutput] = {
    "nyu": MetricDepthOutput(scale=0.000305, shift=0.1378, png_factor=1000.0, min_depth=1e-3, max_depth=10.0,
                             crop="eigen"),
    "kitti": MetricDepthOutput(scale=0.00006016, shift=0.00579, png_factor=256.0, min_depth=1e-3,
                               max_depth=80.0, crop="garg"),
}

# Zero-shot evaluation caps (MiDaS gists: NYU 10 m, KITTI 80 m; dpt.md §6.1). ETH3D, Sintel and TUM caps are
# the MiDaS paper's as remembered in dpt.md §9 and as third-party re-implementations of its evaluation use
# them; no MiDaS code for these three was found. ``--depth-cap`` overrides any of them; for ETH3D, Sintel
# and TUM it also bounds the valid ground truth (lvit.data.zero_shot).
ZERO_SHOT_DEPTH_CAP: Mapping[str, float] = {"nyu": 10.0, "kitti": 80.0, "eth3d": 72.0, "sintel": 72.0,
                                            "tum": 10.0}
# The Table 1 column each zero-shot dataset is printed in.
ZERO_SHOT_METRIC: Mapping[str, str] = {
    "diw": "diw_whdr", "eth3d": "eth3d_abs_rel", "sintel": "sintel_abs_rel",
    "kitti": "kitti_delta_error", "nyu": "nyu_delta_error", "tum": "tum_delta_error",
}

# ------------------------------------------------------------------------------------------- LocalViT

_IMAGENET_METRICS = (
    Metric("top1", True, "Acc@1"), Metric("top5", True, "Acc@5"), Metric("loss", False, "loss"),
)


def _imagenet_row(file: str, model: str, top1: float, top5: float, loss: float) -> Row:
    return Row(file, model, {}, {"top1": top1, "top5": top5, "loss": loss})


pretrained_localvit_imagenet = register_experiment(Experiment(
    name="pretrained_localvit_imagenet",
    paper="localvit",
    title="Released LocalViT checkpoints on ImageNet-1k val (release v1.0.0 README)",
    task="classification",
    rows=(
        _imagenet_row("localvit_t.pth", "localvit_tiny", 74.838, 92.610, 1.211),
        _imagenet_row("localvit_t_se4.pth", "localvit_tiny_se4", 75.738, 93.048, 1.330),
        _imagenet_row("localvit_s.pth", "localvit_small", 80.780, 95.376, 1.019),
        _imagenet_row("localvit_pvt.pth", "localvit_pvt_tiny", 78.144, 94.238, 1.058),
        _imagenet_row("localvit_tnt.pth", "localvit_tnt_tiny", 75.896, 92.898, 1.229),
        _imagenet_row("localvit_swin.pth", "", 81.860, 95.720, 1.109),  # LocalViT-Swin is not built
    ),
    metrics=_IMAGENET_METRICS,
))

# ------------------------------------------------------------------------------------------------ DPT


def _reused_row(file: str, experiment: Experiment, label: str) -> Row:
    row = experiment.row(label)
    return Row(file, row.model, row.model_kwargs, row.published)


pretrained_dpt_zero_shot = register_experiment(Experiment(
    name="pretrained_dpt_zero_shot",
    paper="dpt",
    title="Released DPT depth models (MiDaS v3.0), zero-shot transfer (Table 1 rows)",
    task="depth",
    rows=(
        _reused_row("dpt_large-midas-2f21e586.pt", dpt_zero_shot_depth, "DPT-Large"),
        _reused_row("dpt_hybrid-midas-501f0c75.pt", dpt_zero_shot_depth, "DPT-Hybrid"),
    ),
    metrics=dpt_zero_shot_depth.metrics,
))

_BTS_METRICS = (
    Metric("d1", True, "δ<1.25"), Metric("d2", True, "δ<1.25²"), Metric("d3", True, "δ<1.25³"),
    Metric("abs_rel", False, "AbsRel"), Metric("sq_rel", False, "SqRel"), Metric("rmse", False, "RMSE"),
    Metric("rmse_log", False, "RMSElog"), Metric("silog", False, "SILog"), Metric("log10", False, "log10"),
)


def _bts_row(file: str, values: tuple[float, ...]) -> Row:
    return Row(file, "dpt_hybrid", {"task": "depth"},
               dict(zip((m.name for m in _BTS_METRICS), values, strict=True)))


pretrained_dpt_nyu = register_experiment(Experiment(
    name="pretrained_dpt_nyu",
    paper="dpt",
    title="Released DPT-Hybrid fine-tuned on NYUv2 (EVALUATION.md, 654 images, Eigen crop, cap 10 m)",
    task="depth",
    rows=(
        _bts_row("dpt_hybrid_nyu-2ce69ec7.pt",
                 (0.904, 0.988, 0.998, 0.109, 0.054, 0.357, 0.129, 9.521, 0.045)),
        _bts_row("dpt_hybrid_nyu_new-217f207d.pt",
                 (0.905, 0.988, 0.998, 0.109, 0.055, 0.357, 0.129, 9.427, 0.045)),
    ),
    metrics=_BTS_METRICS,
))

pretrained_dpt_kitti = register_experiment(Experiment(
    name="pretrained_dpt_kitti",
    paper="dpt",
    title="Released DPT-Hybrid fine-tuned on KITTI (EVALUATION.md, Eigen test 652 with GT, Garg crop, 80 m)",
    task="depth",
    rows=(_bts_row("dpt_hybrid_kitti-cb926ef4.pt",
                   (0.959, 0.995, 0.999, 0.062, 0.222, 2.575, 0.092, 8.282, 0.027)),),
    metrics=_BTS_METRICS,
))

pretrained_dpt_ade20k = register_experiment(Experiment(
    name="pretrained_dpt_ade20k",
    paper="dpt",
    title="Released DPT segmentation models on ADE20K val (Table 4 rows; multi-scale + flip)",
    task="segmentation",
    rows=(
        _reused_row("dpt_hybrid-ade20k-53898607.pt", dpt_segmentation, "DPT-Hybrid"),
        _reused_row("dpt_large-ade20k-b12dca68.pt", dpt_segmentation, "DPT-Large"),
    ),
    metrics=dpt_segmentation.metrics,
))

# ------------------------------------------------------------------------------------ the release files


def _released(
    experiment: Experiment, datasets: tuple[str, ...], protocol: str, source: str
) -> tuple[ReleasedCheckpoint, ...]:
    return tuple(ReleasedCheckpoint(row.label, row.model, experiment.name, datasets, protocol, source,
                                    "" if row.model else "lvit does not build this architecture")
                 for row in experiment.rows)


RELEASED_CHECKPOINTS: tuple[ReleasedCheckpoint, ...] = (
    *_released(pretrained_localvit_imagenet, ("imagenet",), "classification", LOCALVIT_RELEASE),
    *_released(pretrained_dpt_zero_shot, tuple(ZERO_SHOT_METRIC), "zero_shot", DPT_RELEASE),
    *_released(pretrained_dpt_nyu, ("nyu",), "metric", DPT_RELEASE),
    *_released(pretrained_dpt_kitti, ("kitti",), "metric", DPT_RELEASE),
    *_released(pretrained_dpt_ade20k, ("ade20k",), "ms_flip", DPT_RELEASE),
)


def released_checkpoint(file: str) -> ReleasedCheckpoint | None:
    """The declaration of a released file by its name (a path's last part), or None."""
    name = file.replace("\\", "/").rsplit("/", 1)[-1]
    return next((c for c in RELEASED_CHECKPOINTS if c.file == name), None)


__all__ = [
    "METRIC_DEPTH",
    "RELEASED_CHECKPOINTS",
    "RESULT_PROFILE",
    "ZERO_SHOT_DEPTH_CAP",
    "ZERO_SHOT_METRIC",
    "MetricDepthOutput",
    "ReleasedCheckpoint",
    "pretrained_dpt_ade20k",
    "pretrained_dpt_kitti",
    "pretrained_dpt_nyu",
    "pretrained_dpt_zero_shot",
    "pretrained_localvit_imagenet",
    "released_checkpoint",
]
