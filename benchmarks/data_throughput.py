"""Samples/s of the procedural generators against the rate at which the proxy training loop consumes them.

Generation: ``LocalShapes`` (classification proxy, 64 px) and ``Scenes`` (dense proxy, 128 px) rendered by
the batched ``generate`` on each device (the loop renders on the GPU when there is one), and by
``__getitem__`` through a ``DataLoader`` (``--workers``). Consumption: images/s of one training step of the
proxy recipe's model (``localvit_tiny`` at 64 px, batch 256; ``dpt_localvit_tiny`` depth at 128 px, batch
64; forward + backward + AdamW, bf16 autocast and channels_last on CUDA as the loop), on the same device.
``generate / consume`` > 1 means the generator keeps ahead of training. (The loop renders each procedural
set once per process, ``CachedDataset``, so the generator's cost is ``train_samples / rate`` once.)
``--max-seconds`` bounds the run: work going at the deadline is interrupted and recorded as an error.

GPU (about 15 s):

    python benchmarks/data_throughput.py --out results/bench/data_throughput.json

CPU smoke test:

    python benchmarks/data_throughput.py --device cpu --samples 16 4 --batch-size 8 2 --train-batch 8 4 \\
        --consume-steps 1 --max-seconds 120 --out /tmp/data_throughput.json
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import before_deadline, environment, synchronize, write_json
from torch.utils.data import DataLoader, Dataset, Subset

import lvit
from lvit.data import LocalShapes, Scenes
from lvit.experiments.recipes import CLASSIFICATION_PROFILES, DEPTH_PROFILES, model_overrides


def rate(fn: Callable[[int], int], samples: int, warmup: int, device: str) -> float:
    """Samples/s of ``fn(samples)`` after ``fn(warmup)`` (allocator, CUDA context, imports excluded)."""
    fn(warmup)
    synchronize(device)
    start = time.perf_counter()
    count = fn(samples)
    synchronize(device)
    return count / (time.perf_counter() - start)


def built_rate(make: Callable[[], Callable[[int], int]], samples: int, warmup: int, device: str) -> float:
    """:func:`rate` of what ``make`` builds: building (rendering, model init) counts against the deadline."""
    return rate(make(), samples, warmup, device)


def batched(ds: Dataset, batch: int, device: str) -> Callable[[int], int]:
    def run(samples: int) -> int:
        for start in range(0, samples, batch):
            ds.generate(torch.arange(start, min(start + batch, samples)), device)  # type: ignore[attr-defined]
        return samples

    return run


def loader(ds: Dataset, batch: int, workers: int) -> Callable[[int], int]:
    def run(samples: int) -> int:
        for _ in DataLoader(Subset(ds, range(samples)), batch_size=batch, num_workers=workers):
            pass
        return samples

    return run


def training(task: str, batch: int, device: str) -> Callable[[int], int]:
    """``run(samples)``: proxy-recipe training steps on fixed data, as many as ``samples`` fill."""
    recipe = CLASSIFICATION_PROFILES["proxy"] if task == "classification" else DEPTH_PROFILES["proxy"]
    name = "localvit_tiny" if task == "classification" else recipe["proxy_models"]["dpt_hybrid"]
    size = recipe["image_size"]
    with torch.device(device):
        model = lvit.create_model(name, **model_overrides(name, task, recipe)).train()
        images = torch.rand(batch, 3, size, size)
        target = (
            torch.randint(0, recipe.get("num_classes", 1), (batch,))
            if task == "classification"
            else torch.rand(batch, size, size)
        )
    cuda = device.startswith("cuda")
    if cuda:  # the loop's default on CUDA
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), fused=cuda)
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy if task == "classification" else F.l1_loss

    def run(samples: int) -> int:
        steps = max(1, samples // batch)
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(images).float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return steps * batch

    return run


Path = tuple[str, str, str, Callable[[], Callable[[int], int]], int, int]


def paths(args: argparse.Namespace) -> Iterator[Path]:
    """(dataset, path, device, make, samples, warmup) of every measurement, ``--device``'s first.

    ``make()`` builds the measured function: inside the time limit, as building a model takes time too.
    """
    sets = [
        ("LocalShapes", "classification", LocalShapes("train", 1 << 20, args.shapes_size), 0),
        ("Scenes", "depth", Scenes("train", 1 << 20, args.scenes_size), 1),
    ]
    for name, task, ds, k in sets:
        samples, batch, train_batch = args.samples[k], args.batch_size[k], args.train_batch[k]
        yield (
            name,
            f"generate(batch={batch})",
            args.device,
            partial(batched, ds, batch, args.device),
            samples * args.gpu_factor,
            batch,
        )
        yield (
            name,
            f"consume: {task} proxy train step (batch {train_batch})",
            args.device,
            partial(training, task, train_batch, args.device),
            args.consume_steps * train_batch,
            train_batch,
        )
        if args.device != "cpu":
            yield name, f"generate(batch={batch})", "cpu", partial(batched, ds, batch, "cpu"), samples, batch
        for workers in args.workers:
            yield (
                name,
                f"DataLoader __getitem__, {workers} workers",
                "cpu",
                partial(loader, ds, batch, workers),
                samples,
                batch,
            )


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.max_seconds
    print("| dataset | path | device | samples/s |\n|---|---|---|---:|", flush=True)
    for name, path, device, make, samples, warmup in paths(args):
        row: dict[str, Any] = dict(dataset=name, path=path, device=device, samples=samples)
        try:
            row["samples_s"] = before_deadline(deadline, built_rate, make, samples, warmup, device)
        except Exception as error:  # one path failing must not lose the others' numbers
            row["error"] = f"{type(error).__name__}: {error}"[:500]
        rows.append(row)
        value = f"{row['samples_s']:,.1f}" if "samples_s" in row else row["error"]
        print(f"| {name} | {path} | {device} | {value} |", flush=True)
    return rows


def keep_up(rows: list[dict[str, Any]], device: str) -> dict[str, float]:
    """generate / consume on ``device`` per dataset: > 1 means the generator is not the bottleneck."""
    ratios = {}
    for name in {r["dataset"] for r in rows}:
        mine = {
            r["path"].split(":")[0]: r.get("samples_s")
            for r in rows
            if r["dataset"] == name and r["device"] == device and not r["path"].startswith("DataLoader")
        }
        generate = next((v for k, v in mine.items() if k.startswith("generate")), None)
        if generate and mine.get("consume"):
            ratios[name] = generate / mine["consume"]
    return ratios


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes-size", type=int, default=64)
    parser.add_argument("--scenes-size", type=int, default=128)
    parser.add_argument(
        "--samples", type=int, nargs=2, default=(512, 64), help="LocalShapes, Scenes samples per CPU path"
    )
    parser.add_argument("--gpu-factor", type=int, default=16, help="samples on --device = this x --samples")
    parser.add_argument("--batch-size", type=int, nargs=2, default=(256, 32), help="generate batch")
    parser.add_argument("--train-batch", type=int, nargs=2, default=(256, 64), help="proxy recipes' batch")
    parser.add_argument("--consume-steps", type=int, default=10, help="timed proxy training steps")
    parser.add_argument("--workers", type=int, nargs="*", default=[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU paths)")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="deadline for the whole run")
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    if args.device == "cpu":
        args.gpu_factor = 1
    return args


def main() -> None:
    args = parse_args()
    wall = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args.device, load_average=os.getloadavg()[0])
    print(
        f"{env['device']} ({env['cpu_threads']} CPU threads, load {env['load_average']:.1f}); "
        f"torch {env['torch']}, timm {env['timm']}, {env['date']}"
    )
    rows = measure(args)
    ratios = keep_up(rows, args.device)
    for name, ratio in sorted(ratios.items()):
        print(f"{name}: generate / consume on {args.device} = {ratio:.2f}")
    write_json(args.out, "data_throughput", env, args, wall, rows=rows, generate_over_consume=ratios)


if __name__ == "__main__":
    main()
