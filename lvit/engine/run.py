"""Run a declared experiment at a profile: every (row, seed) trained, evaluated and stored with provenance.

``run_experiment("localvit_activation", "smoke", seeds=3)`` builds each row's model sized by the profile
(:func:`lvit.experiments.recipes.model_overrides`), its data (:func:`lvit.data.build_dataset`), trains it with
the task's recipe through :func:`lvit.engine.loop.fit`, evaluates the experiment's metrics and appends tidy
rows to ``results/<profile>/<experiment>.csv`` (:mod:`lvit.results`), plus the per-epoch history. A (row,
seed) already stored with the same config hash is skipped (``reuse=True``), and each run checkpoints under
``results/<profile>/checkpoints/`` and resumes from there, so a killed run loses nothing.

A classification training that several tables declare (DeiT-T is in four) runs once per profile and seed:
its history and provenance are kept in ``results/<profile>/runs/<key>.json``, its final weights in
``<key>.pt`` beside it, and every table's row reads it (the rows' ``shared_run`` column names the run). Dense
(DPT) rows at smoke/proxy start from a backbone pretrained on the classification proxy: that pretraining is
one such shared run (:func:`backbone_pretraining`), so it is trained once and a table row of the same model
is the same run. Each run is created under a file lock, so notebooks running concurrently (``lvit reproduce
--jobs``) wait for one another instead of training the same thing twice. Weights are not committed: a machine
that needs a stored run's weights and lacks them trains the configuration again as a run of its own
(``runs/<key>@<UTC start>.json``), never over the record that table rows cite, and a dense row names the run
its backbone came from (``backbone_run``).

Multi-GPU: at the ``paper`` profile with more than one visible GPU, :func:`run_experiment` relaunches itself
as ``python -m torch.distributed.run --standalone --nproc-per-node N -m lvit.engine.run EXPERIMENT ...`` (one
process per GPU, NCCL, DDP; every rank evaluates its share of the images, rank 0 writes results) and reads the
results back. The same command works by hand, e.g. ``torchrun --nproc-per-node 8 -m lvit.engine.run
localvit_main --profile paper``. Under torchrun rank 0 takes the locks and decides for every rank what is
stored already, so shared runs and their weights work as in one process; on several nodes the results
directory must be on a shared filesystem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import lvit
from lvit import results as store
from lvit.data.datasets import LayoutError
from lvit.engine.admission import admitted, free_gib, release_cached_memory
from lvit.engine.loop import (
    LoopConfig,
    TrainSetTooSmallError,
    init_distributed,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from lvit.engine.tasks import build_task, rank, world_size
from lvit.experiments import Experiment, Row, get_experiment, list_experiments
from lvit.experiments.base import PROFILES, TRAINED_PROFILES
from lvit.experiments.recipes import (
    CLASSIFICATION_PROFILES,
    GPU_MEMORY_GIB,
    model_overrides,
    validate_recipe,
)

TRAINING_TASKS = ("classification", "depth", "segmentation")


class TorchrunError(RuntimeError):
    """The torchrun job :func:`run_experiment` launched for several GPUs failed (its ranks said why)."""


# ------------------------------------------------------------------------------------------ data


class CachedDataset(Dataset):
    """A procedural dataset rendered once onto ``device`` and then served by indexing.

    Every sample is a pure function of its index, so rendering each once per process (rather than once per
    epoch and run) changes no value and removes the generator from the training loop's cost.
    """

    def __init__(
        self, dataset: Dataset, device: torch.device, chunk: int = 512, desc: str = "render"
    ) -> None:
        starts = range(0, len(dataset), chunk)  # type: ignore[arg-type]
        # a bar in a terminal: the proxy's depth scenes take a minute and a half to render on a CPU
        parts = [
            dataset.generate(list(range(i, min(i + chunk, len(dataset)))), device)  # type: ignore[attr-defined]
            for i in tqdm(starts, desc=desc, unit="chunk", disable=None, leave=False)
        ]
        first = parts[0]
        if isinstance(first, Mapping):
            self.data: Any = {k: torch.cat([p[k] for p in parts]) for k in first}
        else:
            self.data = tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))
        self.length = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.length

    def generate(self, indices: Sequence[int], device: torch.device | str = "cpu") -> Any:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        if isinstance(self.data, Mapping):
            return {k: v[index.to(v.device)].to(device) for k, v in self.data.items()}
        return tuple(v[index.to(v.device)].to(device) for v in self.data)


_DATA_CACHE: dict[str, Dataset] = {}


def _dataset(
    recipe: Mapping[str, Any], split: str, data_root: str | Path, device: torch.device, **changes: Any
) -> Dataset:
    """``build_dataset`` for ``split``, cached on ``device`` when procedural (keyed by its full config)."""
    from lvit.data import build_dataset

    config = {**recipe, **changes}
    key = store.config_hash({"split": split, "device": str(device), "data_root": str(data_root), **config})
    if key not in _DATA_CACHE:
        dataset = build_dataset(config["dataset"], split, config, data_root)
        _DATA_CACHE[key] = (CachedDataset(dataset, device, desc=f"render {config['dataset']} {split}")
                            if hasattr(dataset, "generate") else dataset)  # fmt: skip
    return _DATA_CACHE[key]


# --------------------------------------------------------------------------------------- models


def _row_model(row: Row, task: str, recipe: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    name = recipe.get("proxy_models", {}).get(row.model, row.model)
    return name, {**row.model_kwargs, **model_overrides(name, task, recipe)}


def backbone_pretraining(dense: Training, model: nn.Module | None = None) -> Training | None:
    """The classification training a dense training's backbone starts from (None if its recipe has none).

    It is an ordinary shared classification run of seed 0 at the profile's classification recipe, so a table
    row of the same model and size (LocalViT-T) is that very run, trained once. The backbone's timm name is
    read off ``model`` (the dense model, when built) or off one built on the meta device (no memory).
    """
    if dense.task == "classification" or dense.recipe.get("pretrain") != "classification":
        return None
    if model is None:
        with torch.device("meta"):
            model = lvit.create_model(dense.model, **dense.kwargs)
    arch = model.backbone.pretrained_cfg["architecture"]
    recipe = dict(CLASSIFICATION_PROFILES[dense.profile])
    backbone_kwargs = {k: v for k, v in dense.kwargs.get("backbone_kwargs", {}).items() if k != "img_size"}
    kwargs = {**model_overrides(arch, "classification", recipe), **backbone_kwargs}
    return Training(arch, kwargs, "classification", recipe, 0, dense.profile, dense.device, dense.results_dir,
                    dense.data_root, f"pretrain {arch}")  # fmt: skip


def imagenet_backbone(dense: Training, model: nn.Module) -> Path | None:
    """The file of ImageNet weights a dense model's backbone starts from at the paper profile
    (``pretrain="imagenet"``: the paper's JAX in21k→in1k 384 releases), or None for another recipe. Nothing
    is downloaded here: the user supplies ``<data_root>/pretrained/<timm architecture>.safetensors`` (or
    ``.pth``), converted by timm's ``checkpoint_filter_fn`` for the architecture as it is loaded
    (``DPT.load_backbone``)."""
    if dense.task == "classification" or dense.recipe.get("pretrain") != "imagenet":
        return None
    backbone = model.backbone
    arch = backbone.pretrained_cfg["architecture"]
    files = [Path(dense.data_root) / "pretrained" / f"{arch}{suffix}" for suffix in (".safetensors", ".pth")]
    found = [path for path in files if path.is_file()]
    if not found:
        raise LayoutError(f"missing {files[0]} (or {files[1].name}): timm's {arch!r} ImageNet weights, "
                          f"which {dense.model}'s backbone starts from at the paper profile (data/README.md)")
    return found[0]


def pretrained_backbone(pretraining: Training) -> tuple[str, dict[str, torch.Tensor]]:
    """The run whose weights ``pretraining`` ends with, and those weights: a stored run's whose weights are
    here (:func:`run_with_weights`), else a run's trained now, under the shared run's lock."""
    run = train_shared(pretraining)
    weights = store.shared_run_weights_path(pretraining.results_dir, pretraining.profile, run)
    return run, load_checkpoint(weights)


# ------------------------------------------------------------------------------------- training


def train(
    model: nn.Module,
    task: str,
    recipe: Mapping[str, Any],
    seed: int,
    device: torch.device,
    data_root: str | Path,
    checkpoint_dir: Path,
    desc: str,
    on_first_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` with a (validated) recipe of ``task``; returns the per-epoch history.

    Resumes from ``checkpoint_dir`` when it holds a checkpoint of an interrupted run. ``on_first_step``: as
    :func:`lvit.engine.loop.fit`'s.
    """
    from lvit.engine.loop import fit

    train_set = _dataset(recipe, "train", data_root, device)
    val_set = _dataset(recipe, "val", data_root, device)
    config = LoopConfig(
        epochs=recipe["epochs"],
        batch_size=recipe["batch_size"],
        grad_accum=recipe.get("grad_accum", 1),
        max_steps=recipe.get("max_steps"),
        num_workers=recipe.get("num_workers", 0),
        repeated_aug=recipe.get("repeated_aug", 1),
        compile=bool(recipe.get("compile")) and device.type == "cuda",
        cuda_graph=bool(recipe.get("cuda_graph")),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=recipe.get("checkpoint_every", 0),
        resume=True,
        deterministic=recipe.get("deterministic", False),
        seed=seed,
        device=str(device),
        progress_desc=desc,
    )
    return fit(model, build_task(task, recipe), train_set, val_set, config, on_first_step=on_first_step)


_COMPLEXITY_CACHE: dict[str, dict[str, float]] = {}


def _complexity(model_name: str, kwargs: Mapping[str, Any]) -> dict[str, float]:
    """Params (M) and GMACs at the paper's 224x224 with the paper's counter, of the row's full-size model
    (what the tables' columns measure, whatever the profile trains); computed once per process and row."""
    from lvit.complexity import count_macs, count_params

    key = store.config_hash({"model": model_name, "kwargs": dict(kwargs)})
    if key not in _COMPLEXITY_CACHE:
        model = lvit.create_model(model_name, **kwargs)
        _COMPLEXITY_CACHE[key] = {
            "params_m": count_params(model) / 1e6,
            "flops_g": count_macs(model, (3, 224, 224)) / 1e9,
        }
    return dict(_COMPLEXITY_CACHE[key])


def _eval_depth(
    experiment: Experiment,
    row: Row,
    model: nn.Module,
    recipe: Mapping[str, Any],
    device: torch.device,
    data_root: str | Path,
) -> dict[str, float]:
    """Each declared metric on its domain (a procedural stand-in, or a dataset of the paper's mix); ``mean_*``
    averages the per-domain metrics when there are some, else is measured on the whole validation mix (at the
    row's inference side for Figure 4). The depth cap is the recipe's when it declares one (None: each image's
    farthest valid depth), else the procedural domains' largest depth."""
    from lvit.data.scenes import DOMAIN_SPECS
    from lvit.engine.tasks import DepthTask

    def measures(data: Dataset, domains: Iterable[str]) -> dict[str, float]:
        scenes_cap = max(DOMAIN_SPECS[d].max_depth for d in domains) if "depth_cap" not in recipe else None
        task = DepthTask({"depth_cap": scenes_cap, **recipe})  # the recipe's cap first
        return task.evaluate(model, data, device, recipe["batch_size"], across_ranks=world_size() > 1)

    domains: Mapping[str, str] = recipe.get("metric_domains", {})
    values: dict[str, float] = {}
    names = [m.name for m in experiment.metrics]
    for name in names:
        if name in domains:
            data = _dataset(recipe, "val", data_root, device, val_domains=(domains[name],))
            values[name] = measures(data, (domains[name],))[name.split("_", 1)[1]]
    for name in names:
        if not name.startswith("mean_") or name in values:
            continue
        measure = name.removeprefix("mean_")
        parts = [values[n] for n in names if n in domains and n.endswith(measure)]
        if parts:
            values[name] = sum(parts) / len(parts)
            continue
        changes: dict[str, Any] = {}
        if experiment.name == "dpt_inference_resolution":
            from lvit.experiments.dpt import inference_side

            side = _side(recipe["image_size"])
            # DPT needs sides divisible by twice the patch (its last reassemble stage halves the grid)
            changes["image_size"] = inference_side(row.label, side, multiple=2 * recipe.get("patch_size", 16))
        data = _dataset(recipe, "val", data_root, device, **changes)
        values[name] = measures(data, getattr(data, "domains", DOMAIN_SPECS))[measure]
    return values


def _side(image_size: Any) -> int:
    return int(image_size[0]) if isinstance(image_size, tuple | list) else int(image_size)


def _evaluate(
    experiment: Experiment,
    row: Row,
    model: nn.Module,
    history: list[dict[str, Any]],
    recipe: Mapping[str, Any],
    device: torch.device,
    data_root: str | Path,
) -> dict[str, float]:
    names = {m.name for m in experiment.metrics}
    if experiment.task == "depth":
        return _eval_depth(experiment, row, model, recipe, device, data_root)
    last = history[-1]
    values = {k.removeprefix("val_"): v for k, v in last.items() if k.startswith("val_")}
    values["train_loss"] = last["train_loss"]
    return {k: float(v) for k, v in values.items() if k in names}


@dataclass(frozen=True)
class Training:
    """One training of a (row, seed): the model and its kwargs as the profile sizes them, and where it runs.

    ``key`` identifies it: rows that differ only in how they are evaluated (Figure 4's inference sides)
    share it, as does the same model in different tables. The lvit version is part of it, as of every
    result's config, so a stored run of older code is not reused.
    """

    model: str
    kwargs: Mapping[str, Any]
    task: str
    recipe: Mapping[str, Any]
    seed: int
    profile: str
    device: torch.device
    results_dir: str | Path
    data_root: str | Path
    desc: str = ""

    @property
    def key(self) -> str:
        config = {"model": self.model, "kwargs": dict(self.kwargs), "recipe": dict(self.recipe)}
        return store.config_hash({**config, "seed": self.seed, "lvit": lvit.__version__})

    def checkpoint_dir(self, owner: str) -> Path:
        """Resume point while it runs (removed once its results are stored)."""
        return Path(self.results_dir) / self.profile / "checkpoints" / owner / self.key[:16]

    def build_model(self) -> nn.Module:
        """The model at its seed's initialisation; a dense model's backbone comes from the profile's
        classification pretraining when the recipe says so."""
        return self._built()[0]

    def _built(self) -> tuple[nn.Module, str]:
        """:meth:`build_model`'s model, and the shared run its backbone was loaded from ("" if none)."""
        torch.manual_seed(self.seed)
        model = lvit.create_model(self.model, **self.kwargs)
        backbone_run = ""
        pretraining = backbone_pretraining(self, model)
        if pretraining is not None:
            backbone_run, weights = pretrained_backbone(pretraining)
            model.load_backbone(weights)  # type: ignore[operator]
        elif (imagenet := imagenet_backbone(self, model)) is not None:
            model.load_backbone(imagenet)  # type: ignore[operator]
        return model, backbone_run

    def run(self, ckpt: Path) -> tuple[nn.Module, list[dict[str, Any]], str]:
        """Build and train the model: (model, history, the shared run its backbone came from or "")."""
        # at the recipe's CPU thread count whoever runs it (a notebook, a reproduce worker): float sums
        # depend on the thread count, so a run's numbers would depend on which process did it
        with _cpu_threads(self.recipe.get("cpu_threads") if self.device.type == "cpu" else None):
            model, backbone_run = self._built()  # before admission: a backbone pretraining waits for its own
            need_gib = GPU_MEMORY_GIB.get((self.task, self.profile), 0.0)
            with admitted(self.device, need_gib) as settled:
                history = train(model, self.task, self.recipe, self.seed, self.device, self.data_root, ckpt,
                                self.desc, on_first_step=settled)
        return model, history, backbone_run


def _training(row: Row, task: str, recipe: Mapping[str, Any], seed: int, profile: str, device: torch.device,
              results_dir: str | Path, data_root: str | Path) -> Training:  # fmt: skip
    name, kwargs = _row_model(row, task, recipe)
    return Training(name, kwargs, task, recipe, seed, profile, device, results_dir, data_root,
                    f"{row.label} s{seed}")  # fmt: skip


class _Trained(NamedTuple):
    """One training's outcome, kept while the consecutive rows that share it are evaluated."""

    model: nn.Module | None
    history: list[dict[str, Any]]
    ckpt: Path
    shared_run: str  # the shared run whose record a classification row reads ("" for a dense training)
    backbone_run: str  # the run a dense training's backbone was loaded from ("" if it has none)


def _run_row(
    experiment: Experiment,
    row: Row,
    profile: str,
    recipe: Mapping[str, Any],
    seed: int,
    device: torch.device,
    data_root: str | Path,
    results_dir: str | Path,
    config: Mapping[str, Any],
    trained: dict[str, _Trained],
    reuse: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate one (row, seed); returns its result records (rank 0) or [] (other ranks)."""
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    task = experiment.task
    metrics: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    shared_run, backbone_run, wall_s = "", "", None
    if task in ("classification", "complexity") and {"params_m", "flops_g"} & {
        m.name for m in experiment.metrics
    }:
        metrics.update(_complexity(row.model, row.model_kwargs))
    if task in TRAINING_TASKS:
        training = _training(row, task, recipe, seed, profile, device, results_dir, data_root)
        train_key = training.key
        # Classification is evaluated from its history alone, so one training serves every table.
        shared = task == "classification"
        if train_key not in trained:
            trained.clear()  # keep one model in memory
            ckpt = training.checkpoint_dir("shared" if shared else experiment.name)
            if shared:
                model, history, wall_s, shared_run = _shared_run(training, ckpt, reuse, need_weights=False)
            else:
                model, history, backbone_run = training.run(ckpt)
            trained[train_key] = _Trained(model, history, ckpt, shared_run, backbone_run)
        model, history, ckpt, shared_run, backbone_run = trained[train_key]
        # every rank: under torchrun a dense row is evaluated by all ranks, each on its share of the images
        metrics.update(_evaluate(experiment, row, model, history, recipe, device, data_root))
        if rank() != 0:
            return []
        store.write_history(results_dir, profile, experiment.name, row.label, seed, history)
        # The results are stored; the resume point is no longer needed.
        shutil.rmtree(ckpt, ignore_errors=True)
    wall_s = time.perf_counter() - t0 if wall_s is None else wall_s
    prov = store.provenance(profile, seed, str(device), config, started, wall_s)
    epoch = history[-1]["epoch"] if history else None
    return [
        {
            **prov,
            "experiment": experiment.name,
            "row": row.label,
            "metric": metric,
            "value": value,
            "split": "val",
            "epoch": epoch,
            "shared_run": shared_run,
            "backbone_run": backbone_run,
        }
        for metric, value in metrics.items()
    ]


@dataclass(frozen=True)
class DenseRun:
    """Pending (row, seed)s of one dense experiment that share one training (Figure 4's inference sizes do),
    as a reproduce worker runs them: through :func:`run_experiment`, which stores their results."""

    experiment: str
    rows: tuple[str, ...]
    seed: int
    profile: str
    device: str
    results_dir: str
    data_root: str


PendingWork = Training | DenseRun


def pending_work(
    names: Sequence[str],
    profile: str,
    seeds: int | None,
    device: str | torch.device,
    results_dir: str | Path,
    data_root: str | Path,
) -> list[PendingWork]:
    """What running experiments ``names`` at ``profile`` would train, without what is stored: the dense
    backbones' pretrainings first (every dense row waits for one), then the dense runs, then the other
    classification trainings, seed by seed and slowest model first within a seed. Each classification
    training appears once, however many tables (or backbones) share it.

    ``seeds`` is a count (None: each experiment's default at the profile). A (row, seed) whose table result
    is stored under the current declaration needs no training, as in :func:`run_experiment`.
    """
    target = resolve_device(str(device))
    pretrainings: dict[str, Training] = {}
    dense: list[DenseRun] = []
    classification: dict[str, Training] = {}
    for name in names:
        task = get_experiment(name).task
        for seed, trainings in _pending_trainings(name, profile, seeds, target, results_dir, data_root):
            if task == "classification":
                # a table row needs a stored run's record (its history), not its weights
                classification.update((t.key, t) for _, t in trainings if not store.shared_run_names(
                    t.results_dir, t.profile, t.key))
                continue
            groups: dict[str, list[str]] = {}
            for label, training in trainings:
                if training.key not in groups:  # rows of one training share its backbone: look it up once
                    pretraining = backbone_pretraining(training)
                    if pretraining is not None and run_with_weights(pretraining) is None:
                        pretrainings[pretraining.key] = pretraining
                groups.setdefault(training.key, []).append(label)
            dense += [DenseRun(name, tuple(labels), seed, profile, str(target), str(results_dir),
                               str(data_root)) for labels in groups.values()]  # fmt: skip
    rest = [t for key, t in classification.items() if key not in pretrainings]
    return [*pretrainings.values(), *dense, *_by_seed_slowest_first(rest, results_dir, profile)]


def _pending_trainings(
    name: str, profile: str, seeds: int | None, target: torch.device, results_dir: str | Path,
    data_root: str | Path,
) -> Iterator[tuple[int, list[tuple[str, Training]]]]:
    """Per seed, (row label, training) of each of the experiment's rows whose result is not stored."""
    experiment, recipe, rows = resolve(name, profile, None)
    if experiment.task not in TRAINING_TASKS:
        return
    stored = store.load_results(results_dir, profile, name)
    for seed in range(seeds or experiment.default_seeds(profile)):
        pending = [r for r in rows if not _result_stored(stored, name, r, profile, seed,
                                                         run_config(name, r, recipe, profile, seed))]
        yield seed, [(r.label, _training(r, experiment.task, recipe, seed, profile, target, results_dir,
                                         data_root)) for r in pending]  # fmt: skip


def run_with_weights(training: Training) -> str | None:
    """The first stored run of ``training``'s configuration whose weights are on this machine (None if none).
    A run is complete once its record is written, which follows its weights."""
    t = training
    here = [n for n in store.shared_run_names(t.results_dir, t.profile, t.key)
            if store.shared_run_weights_path(t.results_dir, t.profile, n).exists()]
    return here[0] if here else None


def _by_seed_slowest_first(
    trainings: list[Training], results_dir: str | Path, profile: str
) -> list[Training]:
    """Order by seed, then by the median wall time stored runs of the same model took at this profile (of
    any version: a hint for scheduling, not a result), slowest first.

    Seed first, so that a suite cut short by a deadline has every row at its first seed before any row at
    its third; slowest first within a seed, so that the slow trainings do not form the tail.
    """
    walls: dict[str, list[float]] = {}
    for (model, _), values in _stored_run_walls(results_dir, profile).items():
        walls.setdefault(model, []).extend(values)
    median = {model: statistics.median(values) for model, values in walls.items()}
    return sorted(trainings, key=lambda t: (t.seed, -median.get(t.model, 0.0)))  # stable: ties keep order


def _stored_run_walls(results_dir: str | Path, profile: str) -> dict[tuple[str, str], list[float]]:
    """Wall times of the stored shared runs at ``profile`` (every seed and version), by (model, kwargs)."""
    walls: dict[tuple[str, str], list[float]] = {}
    for path in (Path(results_dir) / profile / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        config = (record["model"], _kwargs_text(record.get("kwargs")))  # records of older code may lack them
        walls.setdefault(config, []).append(float(record["wall_s"]))
    return walls


def _kwargs_text(kwargs: Mapping[str, Any] | None) -> str:
    # a record's kwargs went through JSON: tuples came back as lists, so compare both as JSON text
    return json.dumps(dict(kwargs) if kwargs is not None else None, sort_keys=True, default=str)


def wall_hints(pending: Sequence[PendingWork], results_dir: str | Path, profile: str) -> list[float | None]:
    """For each item of :func:`pending_work`, the median seconds stored results of the same configuration
    took at any seed (None: nothing stored): a training's by its shared runs (model and kwargs), a dense
    run's by its rows' stored results, summed over the rows it trains and evaluates. A hint for planning,
    not a timing: stored runs may have shared their GPU with others, and may be of older code.
    """
    runs = _stored_run_walls(results_dir, profile)
    tables: dict[str, pd.DataFrame] = {}
    hints: list[float | None] = []
    for work in pending:
        if isinstance(work, Training):
            walls = runs.get((work.model, _kwargs_text(work.kwargs)))
            hints.append(statistics.median(walls) if walls else None)
            continue
        if work.experiment not in tables:
            tables[work.experiment] = store.load_results(results_dir, profile, work.experiment)
        df = tables[work.experiment]
        per_run = df[df["row"].isin(work.rows)].drop_duplicates(["row", "seed"])  # one wall per (row, seed)
        medians = per_run.groupby("row")["wall_s"].median()
        hints.append(float(medians.sum()) if len(medians) == len(work.rows) else None)
    return hints


def run_pending(work: PendingWork) -> None:
    """Do one item of :func:`pending_work` into the result stores (a reproduce worker's entry point:
    notebooks that need it later read it, or wait on its lock while it runs)."""
    if isinstance(work, DenseRun):
        run_experiment(work.experiment, work.profile, [work.seed], work.device, work.data_root,
                       work.results_dir, list(work.rows))  # fmt: skip
    else:
        train_shared(work)
    release_worker_memory(resolve_device(str(work.device)))


def release_worker_memory(
    device: torch.device, free_memory: Callable[[torch.device], float] = free_gib
) -> None:
    """Between two trainings a worker holds its cached datasets (at proxy 0.5 GiB of LocalShapes, 2.3 GiB of
    Scenes) and its allocator's cache. The allocator's goes back always; the datasets too when the GPU has
    less free than the largest training needs (``GPU_MEMORY_GIB``), since an idle worker's data then keeps a
    training from starting. Off CUDA, nothing: the datasets are in host memory."""
    if device.type != "cuda":
        return
    if free_memory(device) < max(GPU_MEMORY_GIB.values()):
        _DATA_CACHE.clear()  # rendered again, in seconds, if this worker's next training needs one
    release_cached_memory(device)


def train_shared(training: Training) -> str:
    """Do one shared classification training into the shared-run store, unless a stored run's weights are on
    this machine; returns the name of the run whose weights are."""
    ckpt = training.checkpoint_dir("shared")
    run = _shared_run(training, ckpt, reuse=True, need_weights=True)[3]
    shutil.rmtree(ckpt, ignore_errors=True)
    return run


def _shared_run(
    training: Training, ckpt: Path, reuse: bool, need_weights: bool
) -> tuple[nn.Module | None, list[dict[str, Any]], float | None, str]:
    """A classification training shared by every table that declares it: (model or None, history, wall_s,
    the run's name).

    The first caller trains under the run's lock and stores the final weights, then the record of history,
    wall time and provenance (the record marks the run complete). Later callers (other tables, concurrent
    notebooks) read the first run's record and get its wall time; one that ``need_weights`` (a dense model's
    backbone) reads the first run whose weights are on this machine. A reused run returns no model:
    classification metrics are read from the history. Otherwise (``reuse=False``, or weights needed and none
    here) it trains, and a configuration that has a stored run gets a new run beside it
    (:func:`lvit.results.retraining_name`): a stored record is never overwritten.
    """
    t = training
    first = store.shared_run_path(t.results_dir, t.profile, t.key)
    with _locked_by_rank0(first):
        stored = _decided_by_rank0(
            lambda: run_with_weights(t) if need_weights else (first.stem if first.exists() else None)
        )
        if reuse and stored is not None:
            record = json.loads(store.shared_run_path(t.results_dir, t.profile, stored).read_text())
            return None, record["history"], record["wall_s"], stored
        started, t0 = datetime.now(timezone.utc), time.perf_counter()
        model, history, _ = t.run(ckpt)
        wall_s = time.perf_counter() - t0
        run = _decided_by_rank0(
            lambda: store.retraining_name(t.key, started) if first.exists() else first.stem
        )
        if rank() == 0:
            provenance = store.provenance(t.profile, t.seed, str(t.device), dict(t.recipe), started, wall_s)
            record = {"model": t.model, "kwargs": t.kwargs, "seed": t.seed, "wall_s": wall_s,
                      "history": history, "provenance": provenance}  # fmt: skip
            save_checkpoint(store.shared_run_weights_path(t.results_dir, t.profile, run), model.state_dict())
            store.atomic_write_text(store.shared_run_path(t.results_dir, t.profile, run),
                                    json.dumps(record, indent=1, default=str))
        if dist.is_initialized():
            dist.barrier()  # the other ranks may read the weights next (a dense model's backbone)
    return model, history, wall_s, run


def _decided_by_rank0(decide: Callable[..., Any], *args: Any) -> Any:
    """``decide(*args)`` as rank 0 finds it, on every rank: under torchrun the ranks must take one branch,
    and a file check could differ between them (a file another job is writing)."""
    if not dist.is_initialized():
        return decide(*args)
    box = [decide(*args) if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _locked_by_rank0(path: Path) -> contextlib.AbstractContextManager[None]:
    """``path``'s file lock, which under torchrun rank 0 takes for all ranks: they follow its decisions."""
    return contextlib.nullcontext() if rank() != 0 else store.locked(path)


# ----------------------------------------------------------------------------------------- API


def resolve(
    name: str, profile: str, rows: Sequence[str] | None
) -> tuple[Experiment, dict[str, Any], list[Row]]:
    """Experiment, merged recipe and selected rows; every bad input is refused here, before any work."""
    experiment = get_experiment(name)  # KeyError naming the valid experiments
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    recipe = dict(experiment.recipe(profile))
    validate_recipe(recipe, f"{name}/{profile}")
    runnable = [r for r in experiment.rows if r.model]
    if rows is None:
        selected = runnable
    else:
        selected = [experiment.row(label) for label in rows]  # KeyError naming the valid rows
        published_only = [r.label for r in selected if not r.model]
        if published_only:
            raise ValueError(
                f"rows {published_only} of {name!r} are published-only (no model); runnable rows: "
                f"{', '.join(r.label for r in runnable)}"
            )
    if not _has_loader(experiment, recipe):
        from lvit.data import dataset_names

        raise ValueError(
            f"{name}/{profile}: dataset {recipe.get('dataset')!r} is not available; valid "
            f"datasets: {', '.join(dataset_names())}"
        )
    return experiment, recipe, selected


def missing_loader(name: str, profile: str) -> str | None:
    """The dataset experiment ``name`` reads at ``profile`` when lvit has no loader for it (DPT's MIX 6),
    else None: :func:`resolve` refuses such a run, ``lvit list`` marks it and ``lvit reproduce`` skips it."""
    experiment = get_experiment(name)
    if profile not in experiment.profiles:
        return None
    recipe = experiment.recipe(profile)
    return None if _has_loader(experiment, recipe) else str(recipe.get("dataset"))


def _has_loader(experiment: Experiment, recipe: Mapping[str, Any]) -> bool:
    """Whether the recipe's dataset can be built (an experiment that trains nothing needs none)."""
    from lvit.data import dataset_names

    return experiment.task not in TRAINING_TASKS or recipe.get("dataset") in dataset_names()


def seeds_to_run(seeds: int | Sequence[int]) -> list[int]:
    """Seeds 0..n-1 for a count n, else the seeds given; ``ValueError`` when that is none or one is < 0."""
    chosen = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not chosen or min(chosen) < 0:
        raise ValueError("give a count N >= 1 (seeds 0..N-1) or a list of seeds >= 0")
    return chosen


def run_experiment(
    name: str,
    profile: str,
    seeds: int | Sequence[int] | None = None,
    device: str = "auto",
    data_root: str | Path = "data",
    results_dir: str | Path = "results",
    rows: Sequence[str] | None = None,
    reuse: bool = True,
) -> pd.DataFrame:
    """Run ``rows`` (default: every runnable row) of experiment ``name`` at ``profile`` for ``seeds``.

    ``seeds`` is a count (seeds 0..n-1), explicit seeds, or None for the experiment's declared count at
    ``profile`` (:meth:`Experiment.default_seeds`, 3 at proxy). Returns the stored result rows of those
    (row, seed) pairs, newest per metric, reused ones included, with the ``collapsed`` and ``dead_at_init``
    flags of :func:`lvit.results.mark_collapsed`.
    """
    experiment, recipe, selected = resolve(name, profile, rows)
    if seeds is None:
        seeds = experiment.default_seeds(profile)
    seed_list = seeds_to_run(seeds)
    if _relaunch_under_torchrun(profile, device):
        _launch_torchrun(name, profile, seed_list, data_root, results_dir, [r.label for r in selected], reuse)
        return _stored(results_dir, profile, name, selected, seed_list)
    target = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    init_distributed(target)  # under torchrun: the ranks agree on what to train before any of them trains
    with _cpu_threads(recipe.get("cpu_threads") if target.type == "cpu" else None):
        _run_all(experiment, recipe, selected, seed_list, profile, target, data_root, results_dir, reuse)
    release_cached_memory(target)  # its models are gone; the notebook's kernel lives on, holding nothing
    return _stored(results_dir, profile, name, selected, seed_list)


def _relaunch_under_torchrun(profile: str, device: str) -> bool:
    """The paper profile takes every visible GPU, unless the device names one (``cuda:1``) or the CPU."""
    several = torch.cuda.device_count() > 1 and device in ("auto", "cuda")
    return profile == "paper" and several and "WORLD_SIZE" not in os.environ


@contextlib.contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Tiny smoke tensors run faster on one thread: a 2-thread OpenMP op waits for both cores, which a
    loaded CI machine rarely gives at once (measured here: BN + depth-wise conv 6 ms vs 22-90 ms)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_all(
    experiment: Experiment,
    recipe: Mapping[str, Any],
    selected: Sequence[Row],
    seed_list: Sequence[int],
    profile: str,
    target: torch.device,
    data_root: str | Path,
    results_dir: str | Path,
    reuse: bool,
) -> None:
    name = experiment.name
    stored = store.load_results(results_dir, profile, name)
    trained: dict[str, _Trained] = {}
    for seed in seed_list:  # seeds outer: consecutive rows can share one trained model
        for row in selected:
            config = run_config(name, row, recipe, profile, seed)
            pair = (name, row, profile, seed, config)
            if reuse and _decided_by_rank0(_result_stored, stored, *pair):
                continue
            # one process (or torchrun job) at a time runs a (row, seed)
            lock = Path(results_dir) / profile / "checkpoints" / name / store.config_hash(config)[:16]
            with _locked_by_rank0(lock):
                # another process may have stored it while this one waited
                stored = store.load_results(results_dir, profile, name)
                if reuse and _decided_by_rank0(_result_stored, stored, *pair):
                    continue
                records = _run_row(experiment, row, profile, recipe, seed, target, data_root, results_dir,
                                   config, trained, reuse)  # fmt: skip
                if records:
                    store.append_results(results_dir, profile, name, records)


def run_config(name: str, row: Row, recipe: Mapping[str, Any], profile: str, seed: int) -> dict[str, Any]:
    """What a stored (row, seed) result is keyed by: its ``config_hash`` is the hash of this dict.

    A dense row that starts from a proxy-pretrained backbone depends on that pretraining's recipe too.
    """
    config = {
        "experiment": name,
        "row": row.label,
        "model": row.model,
        "model_kwargs": dict(row.model_kwargs),
        "recipe": recipe,
        "profile": profile,
        "seed": seed,
        "lvit": lvit.__version__,
    }
    if recipe.get("pretrain") == "classification":
        config["pretrain_recipe"] = CLASSIFICATION_PROFILES[profile]
    return config


def _result_stored(
    stored: pd.DataFrame, name: str, row: Row, profile: str, seed: int, config: Mapping[str, Any]
) -> bool:
    """Whether ``stored`` holds this (row, seed)'s results under ``config``, the current declaration."""
    hashed = store.config_hash(config)
    return len(store.reusable_results(stored, name, row.label, profile, seed, hashed)) > 0


def declared_config_hash(name: str, row_label: str, profile: str, seed: int) -> str | None:
    """The config hash a run of this (row, seed) would store now; None if the row or profile is gone."""
    try:
        experiment, recipe, (row,) = resolve(name, profile, [row_label])
    except (KeyError, ValueError):
        return None
    return store.config_hash(run_config(experiment.name, row, recipe, profile, seed))


def _stored(
    results_dir: str | Path, profile: str, name: str, rows: Sequence[Row], seeds: Sequence[int]
) -> pd.DataFrame:
    df = store.latest_results(store.load_results(results_dir, profile, name))
    keep = df["row"].isin([r.label for r in rows]) & df["seed"].isin(list(seeds))
    return store.mark_collapsed(df[keep].reset_index(drop=True), results_dir)


def trained_model(
    experiment: str, row: str, profile: str, seed: int = 0, results_dir: str | Path = "results"
) -> nn.Module:
    """The model a stored classification (row, seed) ended its training with, in eval mode: built as the
    profile sized it and loaded (strictly, ``weights_only``) from its shared run's ``runs/<run>.pt``.

    The weights stay on the machine that trained them (they are not committed), and dense runs keep none.
    """
    stored = store.latest_results(store.load_results(results_dir, profile, experiment))
    match = stored[(stored["row"] == row) & (stored["seed"] == seed)]
    if match.empty:
        ran = sorted({f"{r} (seed {s})" for r, s in zip(stored["row"], stored["seed"], strict=True)})
        raise KeyError(f"no stored result of {experiment!r} row {row!r} seed {seed} at {profile!r} in "
                       f"{results_dir}; stored: {', '.join(ran) or 'none'}")
    run = match["shared_run"].iloc[0]  # "" for a run that is not shared
    if not run:
        raise ValueError(f"{experiment!r} row {row!r} is not a shared classification run: only those keep "
                         "their weights")
    record_path = store.shared_run_path(results_dir, profile, run)
    weights = store.shared_run_weights_path(results_dir, profile, run)
    if not weights.exists():
        raise FileNotFoundError(
            f"{weights} is not here: weights stay where they were trained (not committed), and runs stored "
            f"before lvit kept weights have none; train it again with run_experiment({experiment!r}, "
            f"{profile!r}, [{seed}], rows=[{row!r}], reuse=False)"
        )
    record = json.loads(record_path.read_text())
    model = lvit.create_model(record["model"], **record["kwargs"])
    return lvit.load_pretrained(model, weights).eval()


def _launch_torchrun(
    name: str,
    profile: str,
    seeds: Sequence[int],
    data_root: str | Path,
    results_dir: str | Path,
    rows: Sequence[str],
    reuse: bool,
) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={torch.cuda.device_count()}",
        "-m",
        "lvit.engine.run",
        name,
        "--profile",
        profile,
        "--seed",  # the seeds themselves: ``--seeds 1`` would be a count
        *map(str, seeds),
        "--data-root",
        str(data_root),
        "--results-dir",
        str(results_dir),
        "--rows",
        *rows,
    ]
    if not reuse:
        command.append("--no-reuse")
    status = subprocess.run(command).returncode
    if status:
        raise TorchrunError(f"torchrun exited with status {status}; its ranks' messages are above")


# ------------------------------------------------------------------------------------------ CLI


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="an experiment name (see `lvit list`)")
    parser.add_argument("--profile", default="smoke", choices=TRAINED_PROFILES)
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="one number N runs seeds 0..N-1; several numbers are the seeds themselves "
        "(default: the experiment's declared count at the profile, e.g. 3 at proxy)",
    )
    seeds.add_argument("--seed", nargs="+", type=int, default=None, metavar="S",
                       help="exactly these seeds, one or more (--seed 2 runs seed 2 alone)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--rows", nargs="+", default=None, help="row labels (default: every runnable row)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--no-reuse", action="store_true", help="rerun (row, seed) pairs already stored")


def _run_command(args: argparse.Namespace) -> int:
    try:  # bad input is a message, not a traceback, and is refused before any work
        seeds = _checked_run_arguments(args)
    except (KeyError, ValueError) as error:
        raise SystemExit(f"lvit run: {error.args[0]}") from None
    try:
        df = run_experiment(args.experiment, args.profile, seeds, args.device, args.data_root,
                            args.results_dir, args.rows, reuse=not args.no_reuse)  # fmt: skip
    except (LayoutError, TrainSetTooSmallError, TorchrunError) as error:  # the paper's data are the user's
        raise SystemExit(f"lvit run: {error}") from None
    if rank() == 0 and len(df):  # run_experiment started the process group under torchrun
        print(store.summarize(df).to_string(index=False))
    return 0


def _checked_run_arguments(args: argparse.Namespace) -> int | list[int] | None:
    """``lvit run``'s seeds as :func:`run_experiment` takes them, once every argument is checked
    (``KeyError`` or ``ValueError`` naming the valid choices)."""
    from lvit.reproduce import check_device

    resolve(args.experiment, args.profile, args.rows)
    check_device(args.device)
    if args.seed is not None:
        seeds: int | list[int] | None = args.seed
        given = f"--seed {' '.join(map(str, args.seed))}"
    else:
        seeds = args.seeds[0] if args.seeds is not None and len(args.seeds) == 1 else args.seeds
        given = f"--seeds {' '.join(map(str, args.seeds or []))}"
    if seeds is not None:
        try:
            seeds_to_run(seeds)
        except ValueError as error:
            raise ValueError(f"{given}: {error}, or nothing for the experiment's declared count") from None
    for path in (args.results_dir, args.data_root):
        if Path(path).exists() and not Path(path).is_dir():
            raise ValueError(f"{path} is a file, not a directory")
    return seeds


def _list_command(args: argparse.Namespace) -> int:
    for experiment in list_experiments():
        runnable = [r.label for r in experiment.rows if r.model]
        print(f"{experiment.name}  [{experiment.paper}, {experiment.task}]  {experiment.title}")
        profiles = ", ".join(map(partial(_profile_listing, experiment), experiment.profiles))
        profiles = profiles or "none (released checkpoints: lvit evaluate)"
        print(f"    profiles: {profiles}")
        print(f"    rows: {'; '.join(runnable)}")
    return 0


def _profile_listing(experiment: Experiment, profile: str) -> str:
    """The profile, marked when its dataset has no loader yet (:func:`missing_loader`)."""
    dataset = missing_loader(experiment.name, profile)
    return profile if dataset is None else f"{profile} (no loader for {dataset!r} yet)"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run an experiment at a profile and store its results")
    _add_run_arguments(run)
    run.set_defaults(func=_run_command)
    listing = subparsers.add_parser("list", help="list experiments with their rows and profiles")
    listing.set_defaults(func=_list_command)


def main(argv: list[str] | None = None) -> int:
    """``python -m lvit.engine.run``: the torchrun entry point (same arguments as ``lvit run``)."""
    parser = argparse.ArgumentParser(
        prog="python -m lvit.engine.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(parser)
    try:
        return _run_command(parser.parse_args(argv))
    finally:
        from lvit.engine.loop import cleanup_distributed

        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
