"""Tasks: what the loop needs to know about classification, depth and segmentation.

A :class:`Task` builds the optimizer and per-step LR schedule, turns a device batch into ``(inputs,
targets)`` (batch-level augmentation lives here, so it runs on the GPU), computes the loss of the model's
output, and evaluates a model on a dataset. Every recipe value comes from the profile dicts in
``lvit/experiments/recipes.py``; a profile changes sizes, never logic.

Batches are tuples ``(image, label)`` (classification) or ``(image, depth, valid, labels)`` (scenes), or
dicts with those keys (``lvit.data.Scenes`` gives ``image``, ``depth``, ``valid``, ``labels``, ``domain``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, PolyLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch.utils.data import Dataset

from lvit import metrics
from lvit.engine.augment import BatchRandomErasing
from lvit.engine.losses import segmentation_loss, ssi_depth_loss

TASKS: tuple[str, ...] = ("classification", "depth", "segmentation")

# Names of the pretrained part of a dense model; everything else is the randomly initialised decoder.
BACKBONE_PREFIXES: tuple[str, ...] = ("backbone.", "pretrained.", "encoder.")


def _field(batch: Any, key: str, position: int) -> torch.Tensor:
    return batch[key] if isinstance(batch, Mapping) else batch[position]


def world_size() -> int:
    """The process group's size (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if dist.is_initialized() else 0


def _summed_over_ranks(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` summed over the process group's ranks (on ``device``, where NCCL needs them)."""
    summed = values.to(device, copy=True)
    dist.all_reduce(summed)
    return summed.to(values.device)


def _share_rank0_buffers(model: nn.Module) -> None:
    """Every rank takes rank 0's buffers: DDP syncs them at the start of each forward, so after the last
    step each rank's batch norm holds its own update, and the ranks would evaluate different models."""
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


def _output(output: Any, key: str = "out") -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model's main output and optional auxiliary output, whether it returns a tensor, tuple or dict."""
    if isinstance(output, Mapping):
        return output[key], output.get("aux")
    if isinstance(output, list | tuple):
        return output[0], (output[1] if len(output) > 1 else None)
    return output, None


class Task:
    """Interface the loop drives; subclasses implement each step for one task."""

    name: str = ""

    def __init__(self, recipe: Mapping[str, Any]) -> None:
        self.recipe = dict(recipe)

    def configure(
        self, model: nn.Module, steps_per_epoch: int, epochs: int
    ) -> tuple[torch.optim.Optimizer, Scheduler | None]:
        raise NotImplementedError

    def prepare_batch(self, batch: Any, training: bool) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def loss(self, output: Any, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int,
        across_ranks: bool = False,
    ) -> dict[str, float]:
        """The task's metrics of ``model`` on ``dataset``. ``across_ranks``: every rank of the process group
        calls this together, evaluates every world-th sample with rank 0's weights and buffers, and gets the
        metrics of the whole set (sums reduced across ranks). They equal one process's up to float rounding,
        except a ``loss`` that is a batch mean (depth), which depends on how each rank's share is batched."""
        raise NotImplementedError

    def init_diagnostics(
        self, model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int
    ) -> dict[str, float]:
        """Measures of the model before its first step; the loop records them as ``init_<name>`` in the
        history's first entry. None by default."""
        return {}

    def _eval_batches(self, model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int,
                      across_ranks: bool = False):
        from lvit.engine.loop import iterate_batches, to_device, training_autocast

        model.eval()
        indices = range(len(dataset))  # type: ignore[arg-type]
        if across_ranks:
            _share_rank0_buffers(model)
            indices = indices[rank()::world_size()]
        workers = int(self.recipe.get("num_workers", 0))  # real datasets decode and resize on the CPU
        for batch in iterate_batches(dataset, indices, batch_size, device, workers, drop_last=False):
            inputs, targets = self.prepare_batch(to_device(batch, device), training=False)
            with training_autocast(device):
                output = model(inputs)
            yield output, targets


class ClassificationTask(Task):
    """The DeiT recipe LocalViT trained with (``localvit.md`` §3), built from timm's pieces.

    AdamW with lr for the global batch (DeiT: 5e-4 × batch/512), weight decay without decay on norms,
    biases and ``model.no_weight_decay()`` (pos_embed, cls_token) via ``create_optimizer_v2``; cosine schedule
    with linear warmup, stepped per optimizer step; Mixup/CutMix with label smoothing folded into the soft
    targets and ``SoftTargetCrossEntropy``; random erasing applied to the batch on the device. RandAugment is
    per-image PIL work, so it is part of the dataset transform (``randaugment`` recipe key, paper profile on
    ImageNet) rather than of the batch. Repeated augmentation and drop path are read by the loop/model.
    """

    name = "classification"

    def __init__(self, recipe: Mapping[str, Any]) -> None:
        super().__init__(recipe)
        r = self.recipe
        self.num_classes = int(r.get("num_classes", 0))
        smoothing = float(r.get("label_smoothing", 0.0))
        mix = r.get("mixup", 0.0) > 0 or r.get("cutmix", 0.0) > 0
        self.mixup = (
            Mixup(
                mixup_alpha=r.get("mixup", 0.0),
                cutmix_alpha=r.get("cutmix", 0.0),
                prob=r.get("mixup_prob", 1.0),
                switch_prob=r.get("mixup_switch_prob", 0.5),
                label_smoothing=smoothing,
                num_classes=self.num_classes,
            )
            if mix
            else None
        )
        self.smoothing = smoothing
        self.erasing = (
            BatchRandomErasing(probability=r["random_erasing"]) if r.get("random_erasing", 0.0) > 0 else None
        )
        self.soft_ce = SoftTargetCrossEntropy()

    def configure(self, model, steps_per_epoch, epochs):
        r = self.recipe
        optimizer = create_optimizer_v2(
            model,
            opt=r.get("opt", "adamw"),
            lr=r["lr"],
            weight_decay=r.get("weight_decay", 0.05),
            filter_bias_and_bn=True,
        )
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(steps_per_epoch * epochs, 1),
            lr_min=r.get("min_lr", 1e-5),
            warmup_t=int(r.get("warmup_epochs", 0) * steps_per_epoch),
            warmup_lr_init=r.get("warmup_lr", 1e-6),
            t_in_epochs=False,
        )
        return optimizer, scheduler

    def prepare_batch(self, batch, training):
        images, labels = _field(batch, "image", 0), _field(batch, "label", 1)
        if not training:
            return images, labels
        if self.erasing is not None:
            images = self.erasing(images)
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        return images, labels

    def loss(self, output, targets):
        logits, _ = _output(output)
        if targets.ndim == 2:  # soft targets from Mixup (label smoothing already folded in)
            return self.soft_ce(logits.float(), targets)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.smoothing)

    @torch.no_grad()
    def evaluate(self, model, dataset, device, batch_size, across_ranks=False):
        sums = torch.zeros(3, device=device)  # correct, loss, count: float32, as one process always summed
        for output, labels in self._eval_batches(model, dataset, device, batch_size, across_ranks):
            logits = _output(output)[0].float()
            sums[0] += metrics.top1(logits, labels) * len(labels) / 100
            sums[1] += F.cross_entropy(logits, labels, reduction="sum")
            sums[2] += len(labels)
        correct, loss_sum, count = (_summed_over_ranks(sums, device) if across_ranks else sums).tolist()
        return {"top1": correct / count * 100, "loss": loss_sum / count}


def _dense_param_groups(
    model: nn.Module, backbone_lr: float, decoder_lr: float, weight_decay: float
) -> list[dict]:
    """Pretrained backbone and scratch decoder get separate learning rates (DPT: 1e-5 vs 1e-4)."""
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "decoder": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["backbone" if name.startswith(BACKBONE_PREFIXES) else "decoder"].append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": weight_decay}
        for params, lr in ((groups["backbone"], backbone_lr), (groups["decoder"], decoder_lr))
        if params
    ]


class DepthTask(Task):
    """MiDaS/DPT relative depth: SSI trimmed loss in inverse depth + gradient matching (``dpt.md`` §5.1).

    Adam with the backbone at ``backbone_lr`` and the decoder at ``decoder_lr``, constant rate (as DPT).
    The model predicts inverse depth ``(B, H, W)`` (or ``(B, 1, H, W)``); targets are metric depth and a mask.
    Evaluation follows the MiDaS zero-shot protocol (``lvit.metrics.evaluate_zero_shot``) at ``depth_cap``.
    """

    name = "depth"

    def configure(self, model, steps_per_epoch, epochs):
        r = self.recipe
        groups = _dense_param_groups(
            model, r.get("backbone_lr", 1e-5), r.get("decoder_lr", 1e-4), r.get("weight_decay", 0.0)
        )
        return torch.optim.Adam(groups), None

    def prepare_batch(self, batch, training):
        depth = _field(batch, "depth", 1)
        mask = _field(batch, "valid", 2).bool() & (depth > 0)
        return _field(batch, "image", 0), (depth, mask)

    @staticmethod
    def _prediction(output: Any, size: torch.Size) -> torch.Tensor:
        pred = _output(output)[0].float()
        if pred.ndim == 4:
            pred = pred[:, 0]
        if pred.shape[-2:] != size:
            pred = F.interpolate(pred[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return pred

    def loss(self, output, targets):
        depth, mask = targets
        pred = self._prediction(output, depth.shape[-2:])
        inverse_target = torch.where(mask, 1.0 / depth.clamp(min=1e-6), torch.zeros_like(depth))
        r = self.recipe
        return ssi_depth_loss(
            pred,
            inverse_target,
            mask,
            trim=r.get("trim", 0.2),
            grad_weight=r.get("grad_weight", 0.5),
            scales=r.get("grad_scales", 4),
        )

    @torch.no_grad()
    def init_diagnostics(self, model, dataset, device, batch_size):
        # Dead before training? DPT's head ends in a ReLU: if it outputs one value (0) at every pixel of
        # every image of the first validation batch, no gradient reaches the decoder. Recorded so that a run
        # that ends constant tells whether it started so (benchmarks/dpt_init_probe.py) or got there.
        output, (depth, _) = next(self._eval_batches(model, dataset, device, batch_size))
        return {"constant_fraction": float(_constant_maps(self._prediction(output, depth.shape[-2:])).mean())}

    @torch.no_grad()
    def evaluate(self, model, dataset, device, batch_size, across_ranks=False):
        # Per-image metrics averaged over the images that have valid pixels (an empty mask gives NaN).
        # ``constant_fraction``: images whose prediction is one value everywhere. After scale-and-shift
        # alignment such a map scores the same whatever the model, so a collapsed model is flagged.
        totals = torch.zeros(len(_DEPTH_MEASURES), dtype=torch.double, device=device)
        counts = torch.zeros_like(totals)
        for output, (depth, mask) in self._eval_batches(model, dataset, device, batch_size, across_ranks):
            pred = self._prediction(output, depth.shape[-2:])
            per_image = metrics.evaluate_zero_shot(
                pred, depth, mask, self.recipe.get("depth_cap", 80.0), reduction="none"
            )
            per_image["loss"] = self.loss(output, (depth, mask)).expand(len(depth)).double()
            per_image["constant_fraction"] = _constant_maps(pred)
            for i, key in enumerate(_DEPTH_MEASURES):
                totals[i] += per_image[key].nansum()
                counts[i] += (~per_image[key].isnan()).sum()
        if across_ranks:
            totals, counts = _summed_over_ranks(torch.stack([totals, counts]), device)
        means = torch.where(counts > 0, totals / counts.clamp(min=1), torch.nan)
        result = dict(zip(_DEPTH_MEASURES, means.tolist(), strict=True))
        if result["constant_fraction"] == 1.0:
            warnings.warn("the depth model predicts a constant map for every image: its metrics are those "
                          "of a constant prediction (e.g. a final ReLU that outputs 0 everywhere)",
                          RuntimeWarning, stacklevel=2)
        return result


# What DepthTask.evaluate reports: the zero-shot protocol's measures, the loss, and the collapse flag.
_DEPTH_MEASURES = ("abs_rel", "delta_error", "rmse", "loss", "constant_fraction")


def _constant_maps(pred: torch.Tensor) -> torch.Tensor:
    """Per image of ``(B, H, W)``: 1.0 where the prediction is one value everywhere, else 0.0 (double)."""
    flat = pred.flatten(1)
    return (flat.amax(1) == flat.amin(1)).double()


class SegmentationTask(Task):
    """DPT segmentation (``dpt.md`` §5.3): CE with ignore index + 0.2 × auxiliary head CE; SGD momentum 0.9,
    poly schedule (power 0.9) per optimizer step; pixAcc and mIoU accumulated over the whole set."""

    name = "segmentation"

    def configure(self, model, steps_per_epoch, epochs):
        r = self.recipe
        lr = r.get("lr", 0.002)
        groups = _dense_param_groups(
            model, lr, lr * r.get("decoder_lr_mult", 1.0), r.get("weight_decay", 1e-4)
        )
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=r.get("momentum", 0.9))
        scheduler = PolyLRScheduler(
            optimizer,
            t_initial=max(steps_per_epoch * epochs, 1),
            power=r.get("poly_power", 0.9),
            t_in_epochs=False,
        )
        return optimizer, scheduler

    def prepare_batch(self, batch, training):
        return _field(batch, "image", 0), _field(batch, "labels", 3).long()

    def loss(self, output, targets):
        logits, aux = _output(output)
        return segmentation_loss(
            logits,
            targets,
            aux,
            ignore_index=self.recipe.get("ignore_index", -1),
            aux_weight=self.recipe.get("aux_weight", 0.2),
        )

    @torch.no_grad()
    def evaluate(self, model, dataset, device, batch_size, across_ranks=False):
        meter = metrics.SegmentationMeter(
            int(self.recipe["num_classes"]), self.recipe.get("ignore_index", -1)
        )
        for output, labels in self._eval_batches(model, dataset, device, batch_size, across_ranks):
            logits = _output(output)[0]
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(
                    logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
                )
            meter.update(logits.argmax(1), labels)
        if across_ranks:
            meter.confusion = _summed_over_ranks(meter.confusion, device)
        return meter.compute()


def build_task(task: str, recipe: Mapping[str, Any]) -> Task:
    classes = {"classification": ClassificationTask, "depth": DepthTask, "segmentation": SegmentationTask}
    if task not in classes:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(classes)}")
    return classes[task](recipe)


__all__ = ["TASKS", "ClassificationTask", "DepthTask", "SegmentationTask", "Task", "build_task"]
