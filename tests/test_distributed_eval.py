"""Evaluation across torchrun ranks: each rank its share of the set, sums reduced, the whole set's metrics."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from lvit.engine import loop
from lvit.engine.tasks import build_task

SAMPLES = 11  # uneven shards: 6 and 5 images, batched by 4
CLASSES = 3
RECIPES = {"classification": {"num_classes": CLASSES}, "depth": {"depth_cap": 10.0},
           "segmentation": {"num_classes": CLASSES, "ignore_index": -1}}


class _Images(Dataset):
    """Fixed random samples as tasks read them: ``(image, label)`` or ``(image, depth, valid, labels)``."""

    def __init__(self, task: str) -> None:
        g = torch.Generator().manual_seed(7)
        self.task = task
        self.images = torch.randn(SAMPLES, 3, 8, 8, generator=g)
        self.labels = torch.randint(0, CLASSES, (SAMPLES,), generator=g)
        self.depth = torch.rand(SAMPLES, 8, 8, generator=g) * 9 + 0.5
        self.valid = torch.rand(SAMPLES, 8, 8, generator=g) > 0.2
        self.label_maps = torch.randint(-1, CLASSES, (SAMPLES, 8, 8), generator=g)
        self.read: list[int] = []  # the indices this process evaluated

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int):
        self.read.append(int(i))
        if self.task == "classification":
            return self.images[i], self.labels[i]
        return self.images[i], self.depth[i], self.valid[i], self.label_maps[i]


class _Net(nn.Module):
    """Conv + batch norm, with a head for the task (logits, inverse depth or per-pixel logits)."""

    def __init__(self, task: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.task = task
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 1 if task == "depth" else CLASSES, 1)
        self.body[1].running_mean.uniform_(-0.5, 0.5)  # buffers that matter to the outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x))
        if self.task == "classification":
            return out.mean((2, 3))
        return out[:, 0].relu() + 0.01 if self.task == "depth" else out


def _evaluate(task: str, across_ranks: bool = False) -> tuple[dict[str, float], list[int]]:
    """The task's metrics, and the sample indices this process read to get them."""
    model, data = _Net(task), _Images(task)
    if across_ranks and torch.distributed.get_rank() == 1:
        model.body[1].running_mean.add_(3.0)  # this rank's own BN update after the last step
    metrics = build_task(task, RECIPES[task]).evaluate(model, data, torch.device("cpu"), 4, across_ranks)
    return metrics, data.read


def _worker(rank: int, out_dir: str) -> None:
    loop.init_distributed(torch.device("cpu"))
    results = {task: _evaluate(task, across_ranks=True) for task in RECIPES}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(results, handle)


def test_every_rank_gets_the_whole_sets_metrics_of_rank0s_model(tmp_path, on_two_ranks):
    on_two_ranks(_worker, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for task in RECIPES:
        (metrics0, read0), (metrics1, read1) = ranks[0][task], ranks[1][task]
        assert metrics0 == metrics1  # one model (rank 1's own buffer was replaced by rank 0's), one answer
        assert sorted(read0 + read1) == list(range(SAMPLES)) and len(read0) == 6  # each image once, shared
        alone, _ = _evaluate(task)
        # the depth loss is a batch mean, so it depends on how shards are batched; float32 sums round apart
        keys = [k for k in alone if not (task == "depth" and k == "loss")]
        assert {k: metrics0[k] for k in keys} == pytest.approx({k: alone[k] for k in keys}, rel=1e-6)
    assert 0 < alone["mean_iou"] < 100 and 0 < ranks[0]["classification"][0]["top1"] < 100
