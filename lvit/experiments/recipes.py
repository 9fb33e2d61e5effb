"""Training recipes per task and profile. A profile changes sizes, never logic.

``paper`` is the published recipe (LocalViT: DeiT's, ``localvit.md`` §3; DPT: MIX-6 depth and ADE20K
segmentation, ``dpt.md`` §5), ``proxy`` fits the whole suite into minutes of one H100 on procedural data,
``smoke`` proves the wiring on a 2-core CPU in seconds. The engine (``lvit.engine``) interprets these dicts;
experiments reference them by task and may add keys of :data:`RECIPE_KEYS` (e.g. held-out domains).

Model size is a recipe matter too: :func:`model_overrides` turns a recipe's ``image_size``, ``patch_size``,
and ``width`` into constructor kwargs of each model family. Depth stays 12 at every profile (the
placement ablation indexes blocks 1-12); smoke and proxy shrink width and resolution instead.

Classification augmentation per profile (what the engine does with these keys):

* ``paper``: the full DeiT recipe: RandAugment ``rand-m9-mstd0.5-inc1`` and bicubic resizing in the dataset
  transform, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, random erasing 0.25 (on the batch, as at every
  profile; the dataset transform does not erase), repeated augmentation ×3, drop path 0.1, 300 epochs,
  batch 1024, lr 1e-3 (5e-4 × 1024/512), warmup 5, min lr 1e-5.
* ``proxy``: procedural LocalShapes rendered on the GPU, with label smoothing as the only regulariser.
  DeiT's augmentation (Mixup 0.8, CutMix 1.0, random erasing, drop path) pays off over 300 epochs; over the
  proxy's 8 it kept every model near chance in the first GPU run, and without it LocalViT-T reaches 18 %
  (``benchmarks/proxy_probe.py``, ``benchmarks/RESULTS.md``). RandAugment (per-image PIL work) and
  repeated augmentation (triple epoch cost, no new images: the generator already varies every nuisance)
  are off too. lr is 1e-3, 4× DeiT's batch rule (5e-4 × 256 / 512), because the schedule is ~100×
  shorter; DeiT-T stays at chance at the rule's own 2.5e-4 too (``benchmarks/RESULTS.md``, CPU probe).
* ``smoke``: the batch-form DeiT pieces (Mixup/CutMix, random erasing, drop path) at toy sizes, so CI
  executes every code path that ``paper`` uses.

Proxy size: the whole suite (22 distinct classification trainings × 3 seeds, 3 backbone pretrainings,
8 dense trainings × 3 seeds) must fit 25 minutes of one H100. With one seed per dense table it ran in 447 s
on an H200, eager, notebooks sharing the GPU under CUDA MPS (``benchmarks/RESULTS.md``;
``benchmarks/train_calibrate.py`` is the CPU cost model that sized it). With the dense tables' seeds 1-2
(16 trainings, each 50-150 s under that sharing) the model estimates 780 s on an H100, not yet timed as one
run. A run cut short resumes: every finished (row, seed) is stored.
Each proxy step is a few milliseconds of GPU work behind thousands of kernel launches, so ``cuda_graph`` is
on (``lvit.engine.graphed``: forward, loss and backward captured once and replayed) and ``torch.compile`` is
off (each of ~70 short runs would pay its compile). At this size plain ViTs (DeiT-T/S, PVT-T, TNT-T) stay at
chance on LocalShapes while LocalViT learns; the report names such rows, and ``benchmarks/proxy_probe.py``
records what was tried (learning rate, warm-up, 16 epochs, thinner nuisance via the ``nuisance`` key).

Inputs are normalised at every profile as the papers normalise them: ImageNet mean/std for classification,
mean = std = 0.5 for the dense tasks (``lvit.data.build_dataset`` wraps the procedural sets).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Recipe = dict[str, Any]

_DEIT_AUG = dict(mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, label_smoothing=0.1,
                 random_erasing=0.25, weight_decay=0.05, min_lr=1e-5, warmup_lr=1e-6)  # fmt: skip

# Measured on the GPU (docstring): at 8 epochs these keep every proxy model near chance.
_PROXY_NO_AUG = dict(mixup=0.0, cutmix=0.0, random_erasing=0.0, drop_path=0.0)

CLASSIFICATION_PROFILES: dict[str, Recipe] = {
    "smoke": dict(_DEIT_AUG, dataset="local_shapes", image_size=32, patch_size=8, width=48,
                  num_classes=8, train_samples=64, val_samples=32, epochs=1, batch_size=32, lr=1e-3,
                  warmup_epochs=0, drop_path=0.0, repeated_aug=1, deterministic=True, cpu_threads=1),
    "proxy": dict(_DEIT_AUG, dataset="local_shapes", image_size=64, patch_size=8, width=192,
                  num_classes=64, train_samples=10_000, val_samples=2_000, epochs=8, batch_size=256,
                  lr=1e-3, warmup_epochs=1, repeated_aug=1, cuda_graph=True, **_PROXY_NO_AUG),
    "paper": dict(_DEIT_AUG, dataset="imagenet", image_size=224, patch_size=16, num_classes=1000, epochs=300,
                  batch_size=1024, lr=1e-3, warmup_epochs=5, drop_path=0.1, repeated_aug=3,
                  randaugment="rand-m9-mstd0.5-inc1", num_workers=10),
}  # fmt: skip

# Seeds every table runs by default per profile: proxy differences between rows are a few points (LocalViT)
# or a few hundredths of AbsRel (DPT), and a DPT stand-in can start dead (its depth head constant, decided by
# the seed: ``benchmarks/dpt_init_probe.py``), so rows are reported as mean ± std over 3 seeds; smoke proves
# wiring (1), paper is one run per row as printed.
TABLE_SEEDS: dict[str, int] = {"proxy": 3}

# DPT depth: Adam, backbone 1e-5 / decoder 1e-4 at batch 16 (dpt.md §5.1); SSI trimmed + 0.5 × gradient loss.
_DEPTH_LOSS = dict(trim=0.2, grad_weight=0.5, grad_scales=4)

# Smoke and proxy stand-ins for the paper's DPT models: Base -> ViT-Ti backbone, Large -> ViT-S backbone,
# Hybrid (ResNet stem + ViT) -> LocalViT-Ti backbone, the convolution-augmented tiny transformer.
_DPT_PROXIES = {"dpt_base": "dpt_tiny", "dpt_large": "dpt_small", "dpt_hybrid": "dpt_localvit_tiny"}
# Which procedural scene domain stands in for each dataset column of the depth tables (validation split).
_READ_DOMAINS = {"hrwsi_abs_rel": "indoor", "blendedmvs_abs_rel": "outdoor", "redweb_abs_rel": "tabletop"}

# Loader processes per rank for the real dense datasets, in training and evaluation: each image is decoded
# and resized bicubically on the CPU, which the step would otherwise wait for in the main process (the
# classification paper recipe loads ImageNet with DeiT's 10).
_DENSE_WORKERS = 8

DEPTH_PROFILES: dict[str, Recipe] = {
    "smoke": dict(_DEPTH_LOSS, dataset="scenes", image_size=32, patch_size=8, width=48, features=16,
                  train_samples=32, val_samples=12, test_samples=12, epochs=1, batch_size=8, backbone_lr=1e-4,
                  decoder_lr=1e-3, deterministic=True, cpu_threads=1, pretrain="classification",
                  proxy_models=_DPT_PROXIES,
                  metric_domains=_READ_DOMAINS),
    "proxy": dict(_DEPTH_LOSS, dataset="scenes", image_size=128, patch_size=8, width=192,
                  features=64, train_samples=6_000, val_samples=300, test_samples=300, epochs=4,
                  batch_size=64, backbone_lr=1e-4, decoder_lr=1e-3, pretrain="classification",
                  cuda_graph=True, proxy_models=_DPT_PROXIES, metric_domains=_READ_DOMAINS),
    "paper": dict(_DEPTH_LOSS, dataset="mix6", image_size=384, epochs=60, batch_size=16, backbone_lr=1e-5,
                  decoder_lr=1e-4, pretrain="imagenet", num_workers=_DENSE_WORKERS),
}  # fmt: skip

# Table 7 and Figure 4 train on DPT's ablation mix at the paper profile (dpt.md §4.4), not on MIX 6, and
# each Table 7 column is its dataset's validation split. That ground truth has no fixed unit (relative
# disparities; BlendedMVS's per-scene scale), so the evaluation cap is each image's farthest valid depth.
ABLATION_DEPTH_PROFILES: dict[str, Recipe] = {
    **DEPTH_PROFILES,
    "paper": dict(DEPTH_PROFILES["paper"], dataset="dpt_ablation_mix", depth_cap=None,
                  metric_domains={metric: metric.removesuffix("_abs_rel") for metric in _READ_DOMAINS}),
}

# DPT segmentation: SGD momentum 0.9, lr 0.002 at batch 48, poly 0.9, CE + 0.2 aux (dpt.md §5.3).
_SEG = dict(momentum=0.9, weight_decay=1e-4, poly_power=0.9, aux_weight=0.2, ignore_index=-1)

SEGMENTATION_PROFILES: dict[str, Recipe] = {
    "smoke": dict(_SEG, dataset="scenes", image_size=32, patch_size=8, width=48, features=16,
                  num_classes=13, train_samples=32, val_samples=12, epochs=1, batch_size=8, lr=0.01,
                  deterministic=True, cpu_threads=1, pretrain="classification", proxy_models=_DPT_PROXIES),
    "proxy": dict(_SEG, dataset="scenes", image_size=128, patch_size=8, width=192, features=64,
                  num_classes=13, train_samples=6_000, val_samples=300, epochs=4, batch_size=64, lr=0.01,
                  pretrain="classification", cuda_graph=True, proxy_models=_DPT_PROXIES),
    "paper": dict(_SEG, dataset="ade20k", image_size=480, num_classes=150, epochs=240, batch_size=48,
                  lr=0.002, pretrain="imagenet", num_workers=_DENSE_WORKERS),
}  # fmt: skip

# Zero-shot transfer: train on indoor + outdoor, test on the held-out tabletop domain, which stands in for
# the close-range datasets of Table 1 (TUM's δ>1.25, ETH3D's AbsRel); the other columns have no stand-in
# and stay missing (DIW's WHDR needs human ordinal pairs; KITTI/NYU/Sintel would be trained-on domains).
_ZERO_SHOT = dict(train_domains=("indoor", "outdoor"), val_domains=("indoor", "outdoor"),
                  metric_domains={"eth3d_abs_rel": "tabletop", "tum_delta_error": "tabletop"})
ZERO_SHOT_DEPTH_PROFILES: dict[str, Recipe] = {
    **DEPTH_PROFILES,
    "smoke": {**DEPTH_PROFILES["smoke"], **_ZERO_SHOT},
    "proxy": {**DEPTH_PROFILES["proxy"], **_ZERO_SHOT},
}

# GiB of free GPU memory a training waits for before it starts (``lvit.engine.admission``). Scheduling, not
# recipe: it changes no number a run produces, so it is kept out of the recipes and their config hashes.
# Dense: the largest process in the out-of-memory report of the 5f8407f H100 run (11.7 GiB with its CUDA
# context, cached Scenes data and CUDA-graph pools; others held 5-11). Classification: not measured; that
# run's classification pass (8 workers and 12 notebooks) fitted in 80 GB, under 4 GiB a process on average.
# Each history entry now records its training's peak (``gpu_peak_gib``) to check these against.
GPU_MEMORY_GIB: dict[tuple[str, str], float] = {
    ("classification", "proxy"): 4.0,
    ("depth", "proxy"): 12.0,
    ("segmentation", "proxy"): 12.0,
}

# Every key a recipe may carry, with its type. Unknown keys and wrong types are refused before any work.
_NUM = (int, float)
_SIZE = (int, tuple, list)
_SEQ = (tuple, list)
RECIPE_KEYS: dict[str, type | tuple[type, ...]] = {
    "dataset": str, "image_size": _SIZE, "patch_size": int, "width": int, "features": int,
    "num_classes": int, "nuisance": _NUM, "train_samples": int, "val_samples": int, "test_samples": int,
    "epochs": int,
    "batch_size": int, "grad_accum": int, "lr": _NUM, "backbone_lr": _NUM, "decoder_lr": _NUM,
    "decoder_lr_mult": _NUM, "min_lr": _NUM, "warmup_lr": _NUM, "warmup_epochs": _NUM, "weight_decay": _NUM,
    "momentum": _NUM, "poly_power": _NUM, "opt": str, "mixup": _NUM, "cutmix": _NUM, "mixup_prob": _NUM,
    "mixup_switch_prob": _NUM, "label_smoothing": _NUM, "random_erasing": _NUM, "randaugment": str,
    "repeated_aug": int, "drop_path": _NUM, "trim": _NUM, "grad_weight": _NUM, "grad_scales": int,
    "aux_weight": _NUM, "ignore_index": int, "depth_cap": (*_NUM, type(None)), "compile": bool,
    "cuda_graph": bool, "deterministic": bool,
    "num_workers": int, "cpu_threads": int, "checkpoint_every": int, "max_steps": int, "pretrain": str,
    "seed": int,
    "domains": _SEQ, "train_domains": _SEQ, "val_domains": _SEQ, "test_domains": _SEQ, "eval_sizes": _SEQ,
    "proxy_models": dict, "metric_domains": dict,
}  # fmt: skip


def validate_recipe(recipe: Mapping[str, Any], where: str = "recipe") -> None:
    """Refuse unknown keys and values of the wrong type, naming the valid keys or the expected type."""
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown recipe keys {unknown}; valid keys: {', '.join(sorted(RECIPE_KEYS))}"
        )
    for key, value in recipe.items():
        expected = RECIPE_KEYS[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) and bool not in types:  # bool is an int subclass: 1/0 typos must not pass
            raise TypeError(f"{where}: {key}={value!r} must be {_type_names(types)}, got bool")
        if not isinstance(value, types):
            raise TypeError(
                f"{where}: {key}={value!r} must be {_type_names(types)}, got {type(value).__name__}"
            )


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _vit(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """ViT-family sizes; heads stay the model's own (3 or 4 for the tiny models, 6 for small), which divide
    every recipe width, so the head count of each paper row survives the shrinking."""
    keys = {"image_size": "img_size", "patch_size": "patch_size", "width": "embed_dim"}
    return {kwarg: _square(recipe[key]) if key == "image_size" else recipe[key]
            for key, kwarg in keys.items() if key in recipe}  # fmt: skip


def _square(size: Any) -> int:
    """Classification backbones take one side; dense recipes may give (H, W) and use the first."""
    return int(size[0]) if isinstance(size, tuple | list) else int(size)


def _pvt(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """PVT-T's widths (64/128/320/512 with 1/2/5/8 heads) scaled by width/192, heads kept; 4-px stem kept."""
    kwargs: dict[str, Any] = {"img_size": _square(recipe["image_size"])} if "image_size" in recipe else {}
    if "width" in recipe:
        scale = recipe["width"] / 192
        heads = (1, 2, 5, 8)
        kwargs["embed_dims"] = tuple(
            max(h, round(d * scale / h)) * h for d, h in zip((64, 128, 320, 512), heads, strict=True)
        )
    return kwargs


def _tnt(recipe: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = _vit(recipe)
    if "width" in recipe:  # TNT-T's inner width is embed_dim / 16 with 3 inner heads
        kwargs["inner_dim"] = max(3, recipe["width"] // 16 // 3 * 3)
    return kwargs


def model_overrides(model: str, task: str, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs that size ``model`` for ``recipe`` (empty sizes: the model's published shape).

    ``width`` is the width of the *tiny* models; "small" models (DeiT-S, LocalViT-S, DPT-small) get twice it,
    as at paper scale, so a table comparing T and S keeps its ratio.
    """
    if "width" in recipe and "small" in model:
        recipe = {**recipe, "width": 2 * recipe["width"]}
    if model.startswith("dpt"):
        backbone = _vit(recipe)
        kwargs: dict[str, Any] = {"task": task}
        if backbone:
            kwargs["backbone_kwargs"] = backbone
        if "width" in recipe:  # Reassemble widths of DPT-Base relative to its 768-wide backbone
            kwargs["reassemble_channels"] = tuple(recipe["width"] * c // 768 for c in (96, 192, 384, 768))
        if "features" in recipe:
            kwargs["features"] = recipe["features"]
        if task == "segmentation":
            kwargs["num_classes"] = recipe["num_classes"]
        return kwargs
    kwargs = {"num_classes": recipe["num_classes"]} if "num_classes" in recipe else {}
    if recipe.get("drop_path"):
        kwargs["drop_path_rate"] = recipe["drop_path"]
    if "pvt" in model:
        return {**kwargs, **_pvt(recipe)}
    if "tnt" in model:
        return {**kwargs, **_tnt(recipe)}
    return {**kwargs, **_vit(recipe)}
