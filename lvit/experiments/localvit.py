"""LocalViT (Li et al., arXiv 2104.05707): the tables and figures of the seed, declared once.

Params/FLOPs/top-1 of the three ablation tables are transcribed from the seed (``../shared/seeds``); the
main comparison and the curves' end points come from ``../shared/reference/localvit.md`` §2.1 (sources in
:data:`MAIN_SOURCES`). FLOPs are GMACs at 224x224 by the paper's counter (:mod:`lvit.complexity`).

Which model each ablation row is (reference §1.5, §2.2): the γ/DW table compares the plain DeiT MLP
("DeiT-T", timm's ``deit_tiny_patch16_224`` and ``deit_tiny_mlp6``), the 1x1-conv feed-forward without
the depth-wise conv ("LocalViT-T", ``dw=False``) and the locality feed-forward with it ("LocalViT-T*"),
all with ReLU6 and no SE, as the official ``localvit_tiny_mlp6_act1`` (its γ=4 row is the activation
table's "ReLU6" row, 73.7 in both). The activation and placement tables use LocalViT-T (4 heads);
placement blocks without locality are plain DeiT blocks. Row labels give the seed's layers 1-based;
``locality_layers`` are 0-based.
"""

from __future__ import annotations

from collections.abc import Mapping

from lvit.experiments import recipes
from lvit.experiments.base import Claim, Experiment, Metric, Row, register_experiment

TOP1 = Metric("top1", True, "Top-1 Acc. (%)")
PARAMS = Metric("params_m", False, "Params (M)")
FLOPS = Metric("flops_g", False, "FLOPs (G)")
TRAIN_LOSS = Metric("train_loss", False, "Training loss")
COMPLEXITY_METRICS = (TOP1, PARAMS, FLOPS)

# The seed's feed-forward options without SE/ECA: official act code 1 (ReLU6) or 2 (h-swish).
_RELU6 = {"act": "relu6", "attn": "none"}
_HSWISH = {"act": "hswish", "attn": "none"}


def _published(params_m: float, flops_g: float, top1: float) -> dict[str, float]:
    return {"params_m": params_m, "flops_g": flops_g, "top1": top1}


def _all_above(values: Mapping[str, float], better: tuple[str, ...], baseline: str) -> bool:
    return all(values[row] > values[baseline] for row in better)


CONVOLUTION_HELPS = "Convolution can improve the performance of the baseline transformer."
BETTER_ACTIVATION = ("A better activation function after convolution can result in a significant performance "
                     "gain.")
LOWER_LAYERS = "Locality is more important for lower layers."
WIDER_FFN = ("Expanding the hidden dimension of the feed-forward network leads to a larger model capacity "
             "and a higher classification accuracy.")

# ---------------------------------------------------------- Table: expansion ratio γ × depth-wise conv
localvit_expansion_dw = register_experiment(Experiment(
    name="localvit_expansion_dw",
    figure_metrics=("top1",),
    paper="localvit",
    title="Table: expansion ratio γ and depth-wise convolution (ImageNet-1k)",
    task="classification",
    rows=(
        Row("DeiT-T γ=4 no DW", "deit_tiny_patch16_224", {}, _published(5.7, 1.3, 72.2)),
        Row("LocalViT-T γ=4 no DW", "localvit_tiny", {**_RELU6, "dw": False}, _published(5.7, 1.3, 72.5)),
        Row("LocalViT-T* γ=4 DW", "localvit_tiny", dict(_RELU6), _published(5.8, 1.3, 73.7)),
        Row("DeiT-T γ=6 no DW", "deit_tiny_mlp6", {}, _published(7.5, 1.6, 73.1)),  # † in the seed
        Row("LocalViT-T γ=6 no DW", "localvit_tiny", {**_RELU6, "dw": False, "mlp_ratio": 6.0},
            _published(7.5, 1.6, 74.3)),
        Row("LocalViT-T* γ=6 DW", "localvit_tiny_mlp6", {}, _published(7.7, 1.6, 76.1)),
    ),
    metrics=COMPLEXITY_METRICS,
    profiles=recipes.CLASSIFICATION_PROFILES,
    seeds=recipes.TABLE_SEEDS,
    claims=(
        Claim(CONVOLUTION_HELPS, "top1", lambda v: (
            _all_above(v, ("LocalViT-T γ=4 no DW", "LocalViT-T* γ=4 DW"), "DeiT-T γ=4 no DW")
            and _all_above(v, ("LocalViT-T γ=6 no DW", "LocalViT-T* γ=6 DW"), "DeiT-T γ=6 no DW"))),
        Claim(WIDER_FFN, "top1", lambda v: all(v[f"{net} γ=6 {dw}"] > v[f"{net} γ=4 {dw}"] for net, dw in (
            ("DeiT-T", "no DW"), ("LocalViT-T", "no DW"), ("LocalViT-T*", "DW")))),
    ),
))

# ------------------------------------------------------------------------------- Table: activation functions
_LOCALITY_ACTIVATION_ROWS = ("ReLU6", "h-swish", "h-swish + ECA", "h-swish + SE-192", "h-swish + SE-96",
                             "h-swish + SE-48", "h-swish + SE-4")

localvit_activation = register_experiment(Experiment(
    name="localvit_activation",
    figure_metrics=("top1",),
    paper="localvit",
    title="Table: activation functions and channel attention after the depth-wise convolution (ImageNet-1k)",
    task="classification",
    rows=(
        Row("DeiT-T", "deit_tiny_patch16_224", {}, _published(5.7, 1.3, 72.2)),
        Row("ReLU6", "localvit_tiny", dict(_RELU6), _published(5.8, 1.3, 73.7)),
        Row("h-swish", "localvit_tiny", dict(_HSWISH), _published(5.8, 1.3, 74.4)),
        Row("h-swish + ECA", "localvit_tiny", {"act": "hswish", "attn": "eca"}, _published(5.8, 1.3, 74.5)),
        Row("h-swish + SE-192", "localvit_tiny", {}, _published(5.9, 1.3, 74.8)),
        Row("h-swish + SE-96", "localvit_tiny", {"se_reduction": 96}, _published(6.0, 1.3, 74.8)),
        Row("h-swish + SE-48", "localvit_tiny", {"se_reduction": 48}, _published(6.1, 1.3, 75.0)),
        Row("h-swish + SE-4", "localvit_tiny_se4", {}, _published(9.4, 1.3, 75.8)),
    ),
    metrics=COMPLEXITY_METRICS,
    profiles=recipes.CLASSIFICATION_PROFILES,
    seeds=recipes.TABLE_SEEDS,
    claims=(
        Claim(BETTER_ACTIVATION, "top1", lambda v: v["h-swish"] > v["ReLU6"]),
        Claim(CONVOLUTION_HELPS, "top1", lambda v: _all_above(v, _LOCALITY_ACTIVATION_ROWS, "DeiT-T")),
    ),
))

# ---------------------------------------------------------------------------- Table: placement of locality
localvit_placement = register_experiment(Experiment(
    name="localvit_placement",
    figure_metrics=("top1",),
    paper="localvit",
    title="Table: placement of locality (blocks with the depth-wise feed-forward, ImageNet-1k)",
    task="classification",
    rows=(
        Row("High 9~12", "localvit_tiny", {"locality_layers": (8, 9, 10, 11)}, _published(5.78, 1.26, 69.1)),
        Row("Mid 5~8", "localvit_tiny", {"locality_layers": (4, 5, 6, 7)}, _published(5.78, 1.26, 72.1)),
        Row("Low 1~4", "localvit_tiny", {"locality_layers": (0, 1, 2, 3)}, _published(5.78, 1.26, 73.1)),
        Row("Low 1~8", "localvit_tiny", {"locality_layers": tuple(range(8))}, _published(5.84, 1.27, 74.0)),
        Row("All 1~12", "localvit_tiny", {}, _published(5.91, 1.28, 74.8)),
    ),
    metrics=COMPLEXITY_METRICS,
    profiles=recipes.CLASSIFICATION_PROFILES,
    seeds=recipes.TABLE_SEEDS,
    claims=(
        Claim(LOWER_LAYERS, "top1", lambda v: v["Low 1~4"] > v["Mid 5~8"] > v["High 9~12"]),
    ),
))

# ------------------------------------------------------------ Figures (a)-(f): accuracy and training loss
# The seed shows the curves without numbers; the end points are Fig. 1's top-1 (reference §2.1).
_PAIRS = (("DeiT-T", "LocalViT-T"), ("PVT-T", "LocalViT-PVT"), ("TNT-T", "LocalViT-TNT"))

localvit_curves = register_experiment(Experiment(
    name="localvit_curves",
    paper="localvit",
    title="Figures (a)-(f): top-1 accuracy and training loss per epoch, baselines vs LocalViT",
    task="classification",
    rows=(
        Row("DeiT-T", "deit_tiny_patch16_224", {}, {"top1": 72.2}),
        Row("LocalViT-T", "localvit_tiny", {}, {"top1": 74.8}),
        Row("PVT-T", "pvt_tiny", {}, {"top1": 75.1}),
        Row("LocalViT-PVT", "localvit_pvt_tiny", {}, {"top1": 78.2}),
        Row("TNT-T", "tnt_tiny_patch16_224", {}, {"top1": 73.6}),
        Row("LocalViT-TNT", "localvit_tnt_tiny", {}, {"top1": 75.9}),
    ),
    metrics=(TOP1, TRAIN_LOSS),
    profiles=recipes.CLASSIFICATION_PROFILES,
    seeds=recipes.TABLE_SEEDS,
    claims=(
        Claim(CONVOLUTION_HELPS, "top1", lambda v: all(v[local] > v[base] for base, local in _PAIRS)),
    ),
))

# ------------------------------------------------------------------ Main comparison (reference §2.1)
# Where each published figure comes from; "DB" is the v2-derived paper database, "computed" marks a
# figure the reference computed with the paper's counter because the paper prints none.
MAIN_SOURCES: dict[str, str] = {
    "DeiT-T": "top-1 Fig. 1; Params/FLOPs reference §2.1",
    "LocalViT-T": "top-1 Fig. 1 (checkpoint 74.84); Params/FLOPs DB",
    "DeiT-S": "top-1 Fig. 1; Params/FLOPs reference §2.1",
    "LocalViT-S": "top-1 Fig. 1 (checkpoint 80.78); Params/FLOPs DB",
    "PVT-T": "top-1 Fig. 1; FLOPs computed with the paper's counter (N×N attention quirk), plotted ≈4.7 G",
    "LocalViT-PVT": "top-1 Fig. 1 (checkpoint 78.14); Params/FLOPs DB",
    "TNT-T": "top-1 Fig. 1; Params/FLOPs reference §2.1",
    "LocalViT-TNT": "top-1 Fig. 1 (checkpoint 75.90); Params/FLOPs DB",
}

# Printed figures whose trailing zero a float transcription loses; matches are checked to these digits.
PRINTED_DIGITS: dict[tuple[str, str, str], int] = {
    ("localvit_main", "DeiT-S", "flops_g"): 2,  # 4.60
    ("localvit_main", "TNT-T", "flops_g"): 2,  # 1.40
}

localvit_main = register_experiment(Experiment(
    name="localvit_main",
    figure_metrics=("top1",),
    paper="localvit",
    title="Main comparison: LocalViT vs its baselines on DeiT, PVT and TNT (ImageNet-1k, 224x224)",
    task="classification",
    rows=(
        Row("DeiT-T", "deit_tiny_patch16_224", {}, _published(5.7, 1.25, 72.2)),
        Row("LocalViT-T", "localvit_tiny", {}, _published(5.91, 1.28, 74.8)),
        Row("DeiT-S", "deit_small_patch16_224", {}, _published(22.1, 4.60, 79.8)),
        Row("LocalViT-S", "localvit_small", {}, _published(22.4, 4.6, 80.8)),
        Row("PVT-T", "pvt_tiny", {}, _published(13.2, 4.74, 75.1)),
        Row("LocalViT-PVT", "localvit_pvt_tiny", {}, _published(13.5, 4.8, 78.2)),
        Row("TNT-T", "tnt_tiny_patch16_224", {}, _published(6.1, 1.40, 73.6)),
        Row("LocalViT-TNT", "localvit_tnt_tiny", {}, _published(6.3, 1.4, 75.9)),
    ),
    metrics=COMPLEXITY_METRICS,
    profiles=recipes.CLASSIFICATION_PROFILES,
    seeds=recipes.TABLE_SEEDS,
    claims=(
        Claim(CONVOLUTION_HELPS, "top1", lambda v: all(
            v[local] > v[base] for base, local in (*_PAIRS, ("DeiT-S", "LocalViT-S")))),
    ),
))
