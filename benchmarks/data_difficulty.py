"""How hard is LocalShapes? Train small classifiers briefly on CPU and report val top-1.

The proxy profile must leave plain DeiT-T well below saturation so the locality ablations can differ.
This is a cheap probe of that: a few thousand samples, a few hundred steps, one or two CPU threads.

    .venv/bin/python benchmarks/data_difficulty.py --models deit_tiny_patch16_224 cnn --steps 300

``--label outline`` (or ``texture``) trains on one factor of the class alone, 8 classes: does a model that
cannot learn the 64 (outline, texture) classes learn the outline, a shape a few patches wide, by itself?
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from lvit.data import LocalShapes
from lvit.data.synthetic import TEXTURES

# the 64-class label split into its factors (class c is outline c // 8 with texture c % 8)
LABELS = {
    "class": lambda y: y,
    "outline": lambda y: y // len(TEXTURES),
    "texture": lambda y: y % len(TEXTURES),
}


def small_cnn(num_classes: int) -> nn.Module:
    """A 4-stage conv net: the locality-heavy baseline."""

    def stage(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(
        stage(3, 32),
        stage(32, 64),
        stage(64, 128),
        stage(128, 192),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(192, num_classes),
    )


def build(name: str, image_size: int, patch_size: int, num_classes: int) -> nn.Module:
    if name == "cnn":
        return small_cnn(num_classes)
    import lvit  # noqa: F401  (registers lvit models with timm)

    return timm.create_model(name, img_size=image_size, patch_size=patch_size, num_classes=num_classes)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x).argmax(1) for x in images.split(256)])
    return float((preds == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "cnn"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=4096)
    parser.add_argument("--val-samples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", choices=sorted(LABELS), default="class",
                        help="what to predict: the class (64), or its outline or texture alone (8 each)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = LocalShapes("train", args.train_samples, args.image_size)
    val = LocalShapes("val", args.val_samples, args.image_size)
    x_train, y_train = train.generate(range(len(train)))
    x_val, y_val = val.generate(range(len(val)))
    mean, std = x_train.mean((0, 2, 3), keepdim=True), x_train.std((0, 2, 3), keepdim=True)
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    y_train, y_val = LABELS[args.label](y_train), LABELS[args.label](y_val)
    num_classes = int(y_train.max()) + 1
    for name in args.models:
        torch.manual_seed(0)
        model = build(name, args.image_size, args.patch_size, num_classes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, args.lr, total_steps=args.steps, pct_start=0.1
        )
        start = time.time()
        model.train()
        for _ in tqdm(range(args.steps), desc=name):
            batch = torch.randint(len(train), (args.batch_size,))
            x = x_train[batch]
            x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(3), x)  # flips keep every class
            loss = F.cross_entropy(model(x), y_train[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        train_acc = evaluate(model, x_train[:1024], y_train[:1024])
        val_acc = evaluate(model, x_val, y_val)
        print(
            f"{name}: label {args.label}, image {args.image_size}, {args.steps} steps x {args.batch_size}, "
            f"{len(train)} train samples: train top-1 {train_acc:.3f}, val top-1 {val_acc:.3f} "
            f"(chance {1 / num_classes:.3f}), {time.time() - start:.0f} s", flush=True
        )


if __name__ == "__main__":
    main()
