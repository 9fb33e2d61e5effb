"""Tasks build the papers' optimizers: DeiT's decay exclusions, DPT's backbone/decoder learning rates."""

import math

import torch

import lvit
from lvit.engine.tasks import ClassificationTask, DepthTask, SegmentationTask
from lvit.experiments.recipes import CLASSIFICATION_PROFILES, DEPTH_PROFILES, model_overrides

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=4)


def test_classification_excludes_norms_biases_pos_embed_cls_token_from_weight_decay():
    model = lvit.create_model("deit_tiny_patch16_224", **TINY_VIT)
    optimizer, scheduler = ClassificationTask(dict(lr=1e-3, weight_decay=0.05, num_classes=4)).configure(
        model, 10, 2
    )
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias", "blocks.0.norm1.weight"} <= no_decay
    assert all(n.endswith(".weight") and model.get_parameter(n).ndim >= 2 for n in decay)
    assert {"blocks.0.attn.qkv.weight", "head.weight"} <= decay
    assert len(no_decay) + len(decay) == len(list(model.parameters()))
    assert isinstance(optimizer, torch.optim.AdamW)


def test_cosine_schedule_warms_up_then_decays_to_min_lr_per_step():
    model = torch.nn.Linear(2, 2)
    recipe = dict(lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=1, num_classes=2)
    optimizer, scheduler = ClassificationTask(recipe).configure(model, steps_per_epoch=10, epochs=5)
    assert optimizer.param_groups[0]["lr"] == 1e-6  # first step at the warmup start
    scheduler.step_update(5)
    assert abs(optimizer.param_groups[0]["lr"] - (1e-6 + 5 * (1e-3 - 1e-6) / 10)) < 1e-12  # linear warmup
    # as in DeiT (timm, warmup_prefix=False) the cosine runs from step 0, so after warmup it is already at
    # cos(pi * 10 / 50): min + (base - min) * (1 + cos(pi / 5)) / 2
    scheduler.step_update(10)
    assert (
        abs(optimizer.param_groups[0]["lr"] - (1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 5)) / 2))
        < 1e-12
    )
    scheduler.step_update(50)
    assert abs(optimizer.param_groups[0]["lr"] - 1e-5) < 1e-9  # end of training: min_lr


def test_dense_tasks_give_backbone_and_decoder_their_own_learning_rates():
    recipe = DEPTH_PROFILES["smoke"]
    model = lvit.create_model("dpt_tiny", **model_overrides("dpt_tiny", "depth", recipe))
    optimizer, scheduler = DepthTask(recipe).configure(model, 4, 1)
    backbone = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert by_lr[recipe["backbone_lr"]] == backbone
    assert by_lr[recipe["decoder_lr"]].isdisjoint(backbone) and by_lr[recipe["decoder_lr"]]
    assert scheduler is None  # DPT trains depth at a constant rate
    seg_optimizer, poly = SegmentationTask(dict(lr=0.01, num_classes=13)).configure(model, 10, 1)
    poly.step_update(5)
    assert abs(seg_optimizer.param_groups[0]["lr"] - 0.01 * (1 - 0.5) ** 0.9) < 1e-9


def test_classification_batch_augmentation_makes_soft_targets_from_the_recipe():
    task = ClassificationTask(CLASSIFICATION_PROFILES["smoke"])
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, targets = task.prepare_batch((images, labels), training=True)
    assert targets.shape == (4, CLASSIFICATION_PROFILES["smoke"]["num_classes"])
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert targets.max() <= 1 - 0.1 + 0.1 / 8 + 1e-6  # label smoothing 0.1 is folded in
    same, hard = task.prepare_batch((images, labels), training=False)
    assert same is images and hard is labels
