"""Training recipes per task and profile. A profile changes sizes, never logic.

``paper`` is the published recipe (LocalViT: DeiT's; DPT: MiDaS MIX-6 / ADE20K), ``proxy`` fits the
whole suite into one GPU's half hour on procedural data, ``smoke`` proves the wiring on a CPU in seconds.
The engine (``lvit.engine``) interprets these dicts; experiments reference them by task.
"""

from __future__ import annotations

from typing import Any

Recipe = dict[str, Any]

CLASSIFICATION_PROFILES: dict[str, Recipe] = {
    "smoke": dict(dataset="local_shapes", image_size=32, patch_size=8, train_samples=64, val_samples=32,
                  epochs=2, batch_size=32, lr=5e-4, warmup_epochs=0),
    "proxy": dict(dataset="local_shapes", image_size=64, patch_size=8, train_samples=50_000, val_samples=5_000,
                  epochs=10, batch_size=256, lr=1e-3, warmup_epochs=1),
    "paper": dict(dataset="imagenet", image_size=224, patch_size=16, epochs=300, batch_size=1024, lr=1e-3,
                  warmup_epochs=5),
}

DEPTH_PROFILES: dict[str, Recipe] = {
    "smoke": dict(dataset="scenes", image_size=(64, 64), train_samples=32, val_samples=16, epochs=1,
                  batch_size=8),
    "proxy": dict(dataset="scenes", image_size=(128, 128), train_samples=8_000, val_samples=500, epochs=4,
                  batch_size=64),
    "paper": dict(dataset="mix6", image_size=(384, 384), epochs=60, batch_size=16),
}

SEGMENTATION_PROFILES: dict[str, Recipe] = {
    "smoke": dict(dataset="scenes", image_size=(64, 64), train_samples=32, val_samples=16, epochs=1,
                  batch_size=8),
    "proxy": dict(dataset="scenes", image_size=(128, 128), train_samples=8_000, val_samples=500, epochs=4,
                  batch_size=64),
    "paper": dict(dataset="ade20k", image_size=(480, 480), epochs=240, batch_size=48),
}
