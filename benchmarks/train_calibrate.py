"""Calibrate the proxy profile: the H100 time of the whole proxy suite from per-step costs measured here.

    python benchmarks/train_calibrate.py [--device cpu|cuda] [--batch 8] [--steps 2] [--threads 1]

For every model the proxy suite trains, one training step (forward, backward, optimizer; the tasks' own
losses and batch augmentation) is timed at the proxy's resolution and width on a small batch. The same is
done for ``deit_tiny_patch16_224`` at 224x224, whose H100 training throughput is known
(``../shared/reference/ecosystem.md`` §4.6: 9844 images/s, eager fp16, batch 512). The ratio of the two
throughputs for that anchor is the device speed ratio, and each proxy run's H100 time is estimated as

    images trained x (seconds per image here) / ratio x SAFETY

``SAFETY`` (2) covers what a per-image CPU cost cannot see: small-width models use an H100 less well
than DeiT-T at 224 does (launch-bound steps, memory-bound depth-wise convs and BatchNorm), and evaluation,
data rendering and compilation. On a GPU (``--device cuda``) the measured step time is used directly.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch

import lvit
from lvit.engine.tasks import build_task
from lvit.experiments import Experiment, get_experiment
from lvit.experiments.recipes import (
    CLASSIFICATION_PROFILES,
    DEPTH_PROFILES,
    SEGMENTATION_PROFILES,
    model_overrides,
)

H100_DEIT_TINY_TRAIN_IMGS = 9844.0  # ecosystem.md §4.6, eager fp16 AMP, batch 512
SAFETY = 2.0
LOCALVIT_TABLES = ("localvit_expansion_dw", "localvit_activation", "localvit_placement")
DENSE = ("dpt_read_ablation", "dpt_zero_shot_depth", "dpt_inference_resolution", "dpt_segmentation")


def step_seconds(
    model_name: str, task: str, recipe: dict, batch: int, steps: int, device: torch.device
) -> float:
    """Mean seconds of one training step on ``batch`` random images (after one warm-up step)."""
    torch.manual_seed(0)
    kwargs = model_overrides(model_name, task, recipe)
    model = lvit.create_model(model_name, **kwargs).to(device).train()
    trainer = build_task(task, {**recipe, "batch_size": batch})
    optimizer, _ = trainer.configure(model, steps_per_epoch=10, epochs=1)
    side = recipe["image_size"] if isinstance(recipe["image_size"], int) else recipe["image_size"][0]
    images = torch.rand(batch, 3, side, side, device=device)
    if task == "classification":
        batch_data = (images, torch.randint(0, recipe["num_classes"], (batch,), device=device))
    else:
        batch_data = {
            "image": images,
            "depth": torch.rand(batch, side, side, device=device) + 0.5,
            "valid": torch.ones(batch, side, side, dtype=torch.bool, device=device),
            "labels": torch.randint(0, recipe.get("num_classes", 13), (batch, side, side), device=device),
        }
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def one_step() -> None:
        inputs, targets = trainer.prepare_batch(batch_data, training=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = trainer.loss(model(inputs), targets)
        loss.backward()
        optimizer.step()

    one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _models(task_experiments: Iterable[str], recipe: dict) -> dict[str, int]:
    """Model name -> number of runs (rows x 1) in the given experiments, proxies substituted."""
    counts: dict[str, int] = {}
    for name in task_experiments:
        experiment = get_experiment(name)
        trainings = {(r.model, repr(sorted(r.model_kwargs.items()))) for r in experiment.rows if r.model}
        for model, _ in trainings:
            proxy = recipe.get("proxy_models", {}).get(model, model)
            counts[proxy] = counts.get(proxy, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=0,
                        help="seeds per table row (default 0: each table's declared count at proxy)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    anchor_recipe = {**CLASSIFICATION_PROFILES["paper"], "batch_size": args.batch}
    anchor = step_seconds(
        "deit_tiny_patch16_224", "classification", anchor_recipe, args.batch, args.steps, device
    )
    ratio = H100_DEIT_TINY_TRAIN_IMGS / (args.batch / anchor) if device.type == "cpu" else 1.0
    print(
        f"anchor deit_tiny_patch16_224 @224: {args.batch / anchor:.1f} img/s here; H100/here {ratio:.0f}x"
    )

    cls = CLASSIFICATION_PROFILES["proxy"]
    rows = []  # (what, model, runs, images per run, seconds per image here)
    table_models: dict[str, int] = {}
    def seeds(experiment: Experiment) -> int:
        return args.seeds or experiment.default_seeds("proxy")

    for name in LOCALVIT_TABLES:
        experiment = get_experiment(name)
        for row in experiment.rows:
            table_models[row.model] = table_models.get(row.model, 0) + seeds(experiment)
    curves = get_experiment("localvit_curves")
    curve_models = {r.model: seeds(curves) for r in curves.rows}
    images = (
        cls["train_samples"] * cls["epochs"] + cls["val_samples"] * cls["epochs"] // 3
    )  # eval ~1/3 of a step
    for what, models in (("localvit tables", table_models), ("localvit curves", curve_models)):
        for model, runs in models.items():
            rows.append((what, model, runs, images, None, "classification", cls))
    dense_recipes = {"depth": DEPTH_PROFILES["proxy"], "segmentation": SEGMENTATION_PROFILES["proxy"]}
    for name in DENSE:
        experiment = get_experiment(name)
        recipe = dense_recipes[experiment.task]
        runs = _models([name], recipe)
        if name == "dpt_inference_resolution":  # one training, evaluated at every side
            runs = {m: 1 for m in runs}
        dense_images = recipe["train_samples"] * recipe["epochs"]
        for model, count in runs.items():
            rows.append((name, model, count * seeds(experiment), dense_images, None, experiment.task, recipe))
    backbones = {"vit_tiny_patch16_224", "vit_small_patch16_224", "localvit_tiny"}
    for backbone in sorted(backbones):  # the dense models' classification pretraining, once each
        rows.append(("dense pretraining", backbone, 1, images, None, "classification", cls))

    cost: dict[tuple[str, str], float] = {}
    total = 0.0
    print(f"{'part':<26}{'model':<26}{'runs':>5}{'s/img here':>12}{'H100 s/run':>12}{'H100 s':>9}")
    for what, model, runs, n_images, _, task, recipe in rows:
        key = (model, task)
        if key not in cost:
            cost[key] = step_seconds(model, task, recipe, args.batch, args.steps, device) / args.batch
        per_run = n_images * cost[key] / ratio * (SAFETY if device.type == "cpu" else 1.0)
        total += per_run * runs
        print(f"{what:<26}{model:<26}{runs:>5}{cost[key]:>12.4f}{per_run:>12.1f}{per_run * runs:>9.0f}")
    print(f"estimated H100 total: {total:.0f} s = {total / 60:.1f} min (safety factor {SAFETY} included)")


if __name__ == "__main__":
    main()
