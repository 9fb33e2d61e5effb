"""One training loop for classification, depth and segmentation, from a 2-core CPU to torchrun on many GPUs.

What the loop does, and why:

* **Precision.** bf16 autocast on CUDA (no loss scaler needed), fp32 on CPU, where bf16 is slow and noisy.
* **Distributed.** Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is initialised
  with NCCL on CUDA and gloo on CPU, the model is wrapped in DDP, data is sharded by a ``DistributedSampler``
  (or timm's ``RepeatAugSampler``, whose shuffle also takes the seed here) re-seeded with ``set_epoch`` every
  epoch. Batch sizes given to the loop are *global*; each rank takes ``batch_size / (world * grad_accum)``.
  BatchNorm stays per rank, as in the LocalViT and DPT recipes (no SyncBN). Only rank 0 writes checkpoints.
  Every rank evaluates every world-th validation sample with rank 0's buffers, and the task's sums are
  reduced across ranks (DeiT's ``--dist-eval``, without the duplicates its sampler pads with), so no rank
  waits while another evaluates alone.
* **Determinism mode** (``deterministic=True``): seeds python, numpy and torch with ``seed + rank``, sets
  ``torch.use_deterministic_algorithms(True, warn_only=True)``, ``cudnn.benchmark = False`` and
  ``CUBLAS_WORKSPACE_CONFIG=:4096:8``. With the checkpointed RNG states and sampler position this makes
  a resumed run bit-identical to an uninterrupted one on CPU. Without it the seeds are set and cuDNN may
  pick its fastest (non-deterministic) kernels (``cudnn.benchmark = True``).
* **Checkpoints** hold tensors and plain types only (loaded with ``weights_only=True``), are written to a
  temporary file, fsynced and renamed over ``last.pt`` (atomic on POSIX), every ``checkpoint_every`` optimizer
  steps and at each epoch end. ``resume=True`` continues from ``last.pt`` mid-epoch, skipping used samples.
* **NaN/Inf guard**: a non-finite loss is recorded on device (no per-step host sync) and checked before every
  checkpoint write and at epoch end; the loop then raises :class:`NonFiniteLossError` and leaves the last good
  checkpoint untouched.
* **Host syncs**: the running loss is summed on device and read once per epoch.
* **CUDA graphs** (``cuda_graph=True``, one CUDA rank, no accumulation, not compiled): forward, loss and
  backward are captured on the first batch and replayed (``lvit.engine.graphed``); if capture fails the loop
  warns and trains eagerly. Each history entry's ``cuda_graph`` says which way the epoch ran. The graph
  captures LocalViT's feed-forwards as their fused Triton kernels (``fused_locality`` in the history;
  ``LVIT_FUSED_LOCALITY=0`` captures the eager modules instead); evaluation runs the eager modules.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data.distributed_sampler import RepeatAugSampler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from lvit.engine.graphed import GraphedStep, capture_step

if TYPE_CHECKING:
    from lvit.engine.tasks import Task

CHECKPOINT_NAME = "last.pt"


class TrainSetTooSmallError(ValueError):
    """The train set holds fewer samples than one global batch: no optimizer step could be taken."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the last good checkpoint was kept."""


@dataclass
class LoopConfig:
    epochs: int
    batch_size: int  # global batch per optimizer step (all ranks, all accumulation steps)
    grad_accum: int = 1
    max_steps: int | None = (
        None  # stop after this many optimizer steps in total (a budget, or a simulated kill)
    )
    eval_batch_size: int | None = None
    num_workers: int = 0
    repeated_aug: int = 1  # >1: timm RepeatAugSampler with this many repeats (DeiT uses 3)
    compile: bool = False
    cuda_graph: bool = False  # capture forward+loss+backward once and replay it (lvit.engine.graphed)
    channels_last: bool | None = None  # None: on for CUDA
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = only at epoch end
    resume: bool = False
    deterministic: bool = False
    seed: int = 0
    device: str = "auto"
    progress_desc: str = "train"


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → this rank's CUDA device when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank)
    return resolved


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun (or a test's spawn) described in the environment; no-op when alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return info


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: a notebook kernel that ran a deterministic smoke run must not stay slow for a proxy run.
    # warn_only: on CUDA, ops the models and losses need (bilinear-upsample and adaptive-pool backward,
    # 2-D NLL, nanmedian) have no deterministic kernel and would raise; on CPU none of them alerts.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # int64, not numpy's uint32: DDP gathers the states by pickling, and a uint32 tensor does not unpickle
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Checkpoints are untrusted input: only tensors and plain python types are unpickled."""
    return torch.load(path, map_location="cpu", weights_only=True)


class _SkipSampler(Sampler[int]):
    """The wrapped sampler's indices minus the first ``skip`` (those a resumed epoch already consumed)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]


class _SeededRepeatAugSampler(RepeatAugSampler):
    """timm's (DeiT's) repeated-augmentation sampler shuffles by the epoch alone, so every seed would train on
    one data order; this one folds the seed into the number it shuffles by."""

    def __init__(self, dataset: Dataset, seed: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.seed * 100_000 + epoch)  # distinct for every (seed, epoch) below 100k epochs


def _train_sampler(dataset: Dataset, config: LoopConfig, dist_info: DistInfo) -> Sampler[int]:
    if config.repeated_aug > 1:
        return _SeededRepeatAugSampler(
            dataset,
            config.seed,
            num_replicas=dist_info.world,
            rank=dist_info.rank,
            num_repeats=config.repeated_aug,
            selected_round=0,
        )
    return DistributedSampler(
        dataset,
        num_replicas=dist_info.world,
        rank=dist_info.rank,
        shuffle=True,
        seed=config.seed,
        drop_last=True,
    )


def _micro_batch(config: LoopConfig, world: int) -> int:
    per_step = world * config.grad_accum
    if config.batch_size % per_step:
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by world size × grad_accum = {per_step}"
        )
    return config.batch_size // per_step


def iterate_batches(
    dataset: Dataset,
    indices: Iterable[int],
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    drop_last: bool = True,
) -> Iterator[Any]:
    """Batches of ``dataset`` in the order of ``indices``, on ``device``.

    Procedural datasets render a whole batch at once with ``dataset.generate(indices, device)`` (on the GPU
    when there is one); other datasets go through a ``DataLoader``.
    """
    if not hasattr(dataset, "generate"):
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=list(indices),
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
            generator=generator,
        )
        yield from (to_device(batch, device) for batch in loader)
        return
    chunk: list[int] = []
    for index in indices:
        chunk.append(int(index))
        if len(chunk) == batch_size:
            yield dataset.generate(chunk, device)
            chunk = []
    if chunk and not drop_last:
        yield dataset.generate(chunk, device)


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move a batch (tensor, tuple, list or dict of them) to ``device``; 4-D float images go channels_last."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def training_autocast(device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
    """The loop's mixed precision: bf16 autocast on CUDA, fp32 elsewhere. ``cache=False`` inside CUDA-graph
    capture: cached weight casts would be allocated in, and freed from, the graph's private memory pool."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def _graphable(config: LoopConfig, device: torch.device, world: int) -> bool:
    """CUDA graphs need a CUDA device, one rank (DDP's gradient hooks are not captured here), one micro-batch
    per step (replays overwrite gradients) and eager mode (``compile`` brings its own graphs).
    ``LVIT_CUDA_GRAPH=0`` turns them off where capture misbehaves; the histories record either way."""
    if os.environ.get("LVIT_CUDA_GRAPH", "1") == "0":
        return False
    return config.cuda_graph and device.type == "cuda" and world == 1 and config.grad_accum == 1 \
        and not config.compile


def _fusable_locality() -> bool:
    """Whether a captured step takes LocalViT's fused Triton kernels: where Triton is installed (CUDA builds
    of torch on Windows come without it), unless ``LVIT_FUSED_LOCALITY=0``."""
    wanted = os.environ.get("LVIT_FUSED_LOCALITY", "1") != "0"
    return wanted and importlib.util.find_spec("triton") is not None


class _Training:
    """One call of :func:`fit`: the model in training, its optimizer, and where training stands (what a
    checkpoint stores besides the weights and the optimizer)."""

    def __init__(
        self, model: nn.Module, task: Task, config: LoopConfig, device: torch.device, dist_info: DistInfo,
        channels_last: bool, steps_per_epoch: int, micro_batch: int, on_first_step: Callable[[], None] | None,
    ) -> None:
        self.model, self.task, self.config = model, task, config
        self.device, self.dist_info, self.channels_last = device, dist_info, channels_last
        self.steps_per_epoch, self.micro_batch = steps_per_epoch, micro_batch
        self.on_first_step = on_first_step  # called once, after this call's first optimizer step
        self.optimizer, self.scheduler = task.configure(
            model, steps_per_epoch=steps_per_epoch, epochs=config.epochs
        )
        self.ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir else None
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.loss_sum = torch.zeros((), device=device)  # the running epoch's, on device: no per-step sync
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite loss's step
        self.graphed: GraphedStep | None = None  # captured on the first batch, when use_graph
        self._resume()  # before wrapping: DDP broadcasts rank 0's weights as it wraps them
        self.train_model = self._wrapped(model)
        self.use_graph = _graphable(config, device, dist_info.world)

    def _resume(self) -> None:
        """Continue from the checkpoint, if there is one and the config asks to."""
        if not (self.config.resume and self.ckpt_path is not None and self.ckpt_path.exists()):
            return
        state = load_checkpoint(self.ckpt_path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch, self.global_step = (
            state["epoch"], state["step_in_epoch"], state["global_step"]
        )
        self.history = list(state["history"])
        self.loss_sum = state["loss_sum"].to(self.device)
        rank = self.dist_info.rank
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    def _wrapped(self, model: nn.Module) -> nn.Module:
        """``model`` as the steps call it: in DDP across ranks, then compiled if the config asks."""
        if self.dist_info.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return torch.compile(model) if self.config.compile else model  # type: ignore[return-value]

    def checkpoint(self) -> None:
        _raise_if_non_finite(self.bad_step, self.ckpt_path)
        if self.ckpt_path is None:
            return
        rng = _gather_rng(self.dist_info)
        if self.dist_info.is_main:
            save_checkpoint(
                self.ckpt_path,
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                    "epoch": self.epoch,
                    "step_in_epoch": self.step_in_epoch,
                    "global_step": self.global_step,
                    "history": self.history,
                    "loss_sum": self.loss_sum.detach().cpu(),
                    "rng": rng,
                },
            )
        if self.dist_info.world > 1:
            dist.barrier()

    def train_epoch(self, train_set: Dataset, sampler: Sampler[int]) -> int:
        """Take the epoch's remaining optimizer steps (fewer where ``max_steps`` stops the run first); return
        the number of images all ranks trained on."""
        config = self.config
        sampler.set_epoch(self.epoch)  # type: ignore[attr-defined]
        skip = self.step_in_epoch * self.micro_batch * config.grad_accum  # consumed before a resume
        micro_batches = iterate_batches(
            train_set,
            _SkipSampler(sampler, skip) if skip else sampler,
            self.micro_batch,
            self.device,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed * 1000 + self.epoch),
        )
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"{config.progress_desc} {self.epoch + 1}/{config.epochs}",
            unit="step",
            disable=None if self.dist_info.is_main else True,
            leave=False,
        )
        self.train_model.train()
        images = 0
        while self.step_in_epoch < self.steps_per_epoch and not self.out_of_steps:
            images += self.optimizer_step(micro_batches)
            if self.on_first_step is not None:
                self.on_first_step()
                self.on_first_step = None
            bar.update(1)
            if config.checkpoint_every and self.global_step % config.checkpoint_every == 0 \
                    and self.step_in_epoch < self.steps_per_epoch:
                self.checkpoint()
        bar.close()
        return images

    @property
    def out_of_steps(self) -> bool:
        return self.config.max_steps is not None and self.global_step >= self.config.max_steps

    def optimizer_step(self, micro_batches: Iterator[Any]) -> int:
        """One optimizer step over ``grad_accum`` micro-batches; return how many images all ranks took."""
        config, device = self.config, self.device
        if self.graphed is None:  # a graph's replays overwrite the gradients it owns
            self.optimizer.zero_grad(set_to_none=True)
        for micro in range(config.grad_accum):
            batch = to_device(next(micro_batches), device, self.channels_last)
            inputs, targets = self.task.prepare_batch(batch, training=True)
            if self.use_graph and self.graphed is None:
                self.graphed = capture_step(
                    self.train_model, self.task.loss, inputs, targets,
                    lambda: training_autocast(device, cache=False), fuse_locality=_fusable_locality(),
                )
                self.use_graph = self.graphed is not None
            if self.graphed is not None:
                loss = self.graphed(inputs, targets)
            else:
                ddp = isinstance(self.train_model, DistributedDataParallel)
                sync = micro == config.grad_accum - 1 or not ddp
                no_sync = contextlib.nullcontext() if sync else self.train_model.no_sync()
                with no_sync, training_autocast(device):
                    loss = self.task.loss(self.train_model(inputs), targets)
                (loss / config.grad_accum).backward()
            self.loss_sum = self.loss_sum + loss.detach().float() / config.grad_accum
            self.bad_step = torch.where(
                (self.bad_step < 0) & ~torch.isfinite(loss.detach()), self.global_step, self.bad_step
            )
        self.optimizer.step()
        self.global_step += 1
        self.step_in_epoch += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.global_step)
        return config.grad_accum * self.micro_batch * self.dist_info.world

    def epoch_entry(self, images: int, started: float) -> dict[str, Any]:
        """The finished epoch's history entry, training side. Its loss is read here (the epoch's one host
        sync), before the clock stops."""
        loss_sum = self.loss_sum
        if self.dist_info.world > 1:
            dist.all_reduce(loss_sum)
            loss_sum = loss_sum / self.dist_info.world
        train_loss = float(loss_sum) / self.steps_per_epoch
        elapsed = time.perf_counter() - started
        entry: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "train_loss": train_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images / max(elapsed, 1e-9),
            "wall_s": elapsed,
            "cuda_graph": self.graphed is not None,
            "fused_locality": self.graphed is not None and self.graphed.fused_modules > 0,
        }
        if self.device.type == "cuda":
            entry["gpu_peak_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        return entry

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loss_sum = torch.zeros((), device=self.device)


def fit(
    model: nn.Module,
    task: Task,
    train_set: Dataset,
    val_set: Dataset | None,
    config: LoopConfig,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    on_first_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` on ``train_set`` with ``task``'s loss, optimizer and schedule; return the history.

    Each history entry holds ``epoch, train_loss, lr, images_per_s, wall_s`` and the task's validation metrics
    prefixed with ``val_`` (on every rank); the first also, on rank 0, :meth:`Task.init_diagnostics` prefixed
    with ``init_`` (not after a resume from within the first epoch, whose untrained model is gone). On CUDA
    each entry also holds ``gpu_peak_gib``, the most memory this process's allocator had reserved so far.

    ``on_first_step`` is called once, after the first optimizer step this call takes: the step's memory
    (model, optimizer state, CUDA graph) is allocated by then (:mod:`lvit.engine.admission` waits for it).
    """
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = init_distributed(device)
    seed_everything(config.seed + dist_info.rank, config.deterministic)
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    micro_batch = _micro_batch(config, dist_info.world)
    sampler = _train_sampler(train_set, config, dist_info)
    steps_per_epoch = len(sampler) // (micro_batch * config.grad_accum)  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise TrainSetTooSmallError(
            f"train set of {len(train_set)} samples is smaller than one global batch "  # type: ignore[arg-type]
            f"({config.batch_size}); lower batch_size or raise the sample count"
        )
    training = _Training(model, task, config, device, dist_info, channels_last, steps_per_epoch, micro_batch,
                         on_first_step)

    eval_batch = config.eval_batch_size or micro_batch
    init_metrics: dict[str, float] = {}
    if val_set is not None and dist_info.is_main and (training.epoch, training.step_in_epoch) == (0, 0):
        # forked RNG: measuring the untrained model must not change what the training draws
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            init_metrics = task.init_diagnostics(model, val_set, device, eval_batch)

    while training.epoch < config.epochs:
        started = time.perf_counter()
        images = training.train_epoch(train_set, sampler)
        if training.step_in_epoch < steps_per_epoch:  # max_steps stopped it within the epoch
            training.checkpoint()
            return training.history
        entry = training.epoch_entry(images, started)
        if training.epoch == 0:
            entry.update({f"init_{k}": v for k, v in init_metrics.items()})
        _raise_if_non_finite(training.bad_step, training.ckpt_path)
        if val_set is not None:  # every rank its share of the images, so that none waits for rank 0
            metrics = task.evaluate(model, val_set, device, eval_batch, across_ranks=dist_info.world > 1)
            entry.update({f"val_{k}": v for k, v in metrics.items()})
        training.history.append(entry)
        training.next_epoch()
        training.checkpoint()
        if on_epoch_end is not None and dist_info.is_main:
            on_epoch_end(entry)
    return training.history


def _gather_rng(dist_info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank 0 writes them all, so a resumed rank continues its own stream)."""
    state = _rng_state()
    if dist_info.world == 1:
        return [state]
    gathered: list[Any] = [None] * dist_info.world
    dist.all_gather_object(gathered, state)
    return gathered


def _raise_if_non_finite(bad_step: torch.Tensor, ckpt_path: Path | None) -> None:
    step = int(bad_step)  # the one host sync: before a checkpoint write and at epoch end
    if step >= 0:
        kept = (
            f"the last good checkpoint is kept at {ckpt_path}"
            if ckpt_path
            else "no checkpoint was configured"
        )
        raise NonFiniteLossError(
            f"non-finite (NaN/Inf) training loss at optimizer step {step + 1}; stopping. {kept}. "
            "Lower the learning rate or check the data."
        )


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "CHECKPOINT_NAME",
    "DistInfo",
    "LoopConfig",
    "NonFiniteLossError",
    "TrainSetTooSmallError",
    "cleanup_distributed",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]
