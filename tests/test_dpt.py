"""DPT models: official parameter counts, official key layout, any-size forward, Read semantics.

Expected counts are the reference's (``shared/reference/dpt.md`` §3.3, measured on the official code);
key lists with shapes are the official ones (``shared/reference/dpt_keys``). Big models are built on the
meta device (no memory, no compute); forwards use small models at the real input sizes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed
from timm.optim import create_optimizer_v2

import lvit
from lvit.models.convert import CheckpointMismatchError
from lvit.models.dpt import DPT, ReadAdd, ReadIgnore, ReadProject, checkpoint_filter_fn

KEYS_DIR = Path(__file__).parents[2] / "shared" / "reference" / "dpt_keys"

try:
    from lvit.complexity import count_params
except ImportError:  # engineer A's module; same convention: trainable parameters

    def count_params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


pytestmark = pytest.mark.usefixtures("single_thread")


def _meta_model(name: str, **kwargs) -> DPT:
    with torch.device("meta"):
        return lvit.create_model(name, **kwargs)


# dpt_tiny's keywords for a DPT with the official decoder arithmetic on a 4-block, 32-wide ViT
MICRO_DPT = dict(block_taps=(0, 1, 2, 3), reassemble_channels=(8, 16, 32, 32), features=16,
                 backbone_kwargs=dict(depth=4, embed_dim=32, num_heads=2))


def _micro(**kwargs) -> DPT:
    """A micro DPT (:data:`MICRO_DPT`): fast at 384-640 px."""
    return lvit.create_model("dpt_tiny", **{**MICRO_DPT, **kwargs})


# (total = sum of all parameters, trainable = total minus ImageNet head, final norm, refinenet4.resConfUnit1)
OFFICIAL_COUNTS = {
    ("dpt_base", "project"): (111_647_081, 109_696_385),
    ("dpt_base", "ignore"): (106_925_417, 104_974_721),
    ("dpt_base", "add"): (106_925_417, 104_974_721),  # add has no parameters either: checked once
    ("dpt_hybrid", "project"): (123_146_985, 121_196_289),
    ("dpt_hybrid", "ignore"): (120_786_153, 118_835_457),
    ("dpt_large", "project"): (344_055_465, 341_848_257),
    ("dpt_large", "ignore"): (335_662_761, 333_455_553),
}


@pytest.mark.parametrize(("name", "readout"), list(OFFICIAL_COUNTS))
def test_depth_param_counts_match_official(name: str, readout: str) -> None:
    model = _meta_model(name, readout=readout)
    total, trainable = OFFICIAL_COUNTS[name, readout]
    assert sum(p.numel() for p in model.parameters()) == total
    assert count_params(model) == trainable


@pytest.mark.parametrize(("name", "total"), [("dpt_hybrid", 124_076_884), ("dpt_large", 344_985_364)])
def test_segmentation_param_counts_match_official(name: str, total: int) -> None:
    model = _meta_model(name, task="segmentation", num_classes=150)
    assert sum(p.numel() for p in model.parameters()) == total


def _official_state_dict(file: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of the official shapes; ``torch.empty`` on CPU allocates lazily, so this costs nothing."""
    state_dict = {}
    for line in (KEYS_DIR / f"{file}.txt").read_text().splitlines():
        key, shape = line.split("\t")
        state_dict[key] = torch.empty(ast.literal_eval(shape), device=device)
    return state_dict


@pytest.mark.parametrize(("file", "name", "task"), [
    ("depth_base", "dpt_base", "depth"),
    ("depth_hybrid", "dpt_hybrid", "depth"),
    ("depth_large", "dpt_large", "depth"),
    ("seg_hybrid", "dpt_hybrid", "segmentation"),
    ("seg_large", "dpt_large", "segmentation"),
])
def test_official_key_layout_loads_strictly(file: str, name: str, task: str) -> None:
    official = _official_state_dict(file)
    model = _meta_model(name, task=task)
    model.load_state_dict(checkpoint_filter_fn(official), strict=True, assign=True)
    # assign=True makes the model share the file's storage: check the renames land on the right modules.
    landed = {
        "scratch.refinenet4.resConfUnit1.conv1.weight": model.fusion[3].residual_unit1.conv1.weight,
        "scratch.refinenet1.out_conv.weight": model.fusion[0].out_conv.weight,
        "scratch.layer1_rn.weight": model.feature_convs[0].weight,
        "pretrained.act_postprocess4.4.weight": model.reassemble[3].resample.weight,
        "pretrained.act_postprocess4.0.project.0.weight": model.reassemble[3].read.project[0].weight,
        "pretrained.model.pos_embed": model.backbone.pos_embed,
        "scratch.output_conv.0.weight": model.head[0].weight,
    }
    for key, param in landed.items():
        assert param.data_ptr() == official[key].data_ptr(), key


def test_official_layout_with_a_missing_key_fails() -> None:
    official = _official_state_dict("depth_base", device="meta")
    del official["scratch.refinenet2.out_conv.bias"]
    official["pretrained.act_postprocess9.3.weight"] = torch.empty(1, device="meta")
    with pytest.raises(RuntimeError, match=r"fusion\.1\.out_conv\.bias"):
        _meta_model("dpt_base").load_state_dict(checkpoint_filter_fn(official), strict=True, assign=True)


@pytest.mark.parametrize("size", [(384, 384), (384, 672), (480, 640)])
def test_forward_shapes_at_official_sizes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size)
    depth = _micro().eval()
    seg = _micro(task="segmentation", num_classes=5).train()
    with torch.no_grad():
        inverse_depth = depth(x)
        logits, aux = seg(x)
    assert inverse_depth.shape == (1, *size)
    assert (inverse_depth >= 0).all()
    assert logits.shape == aux.shape == (1, 5, *size)


def _random_hybrid() -> DPT:
    """The real DPT-Hybrid in eval mode, with a cheap random init instead of timm's (wiring, not values)."""
    model = _meta_model("dpt_hybrid").to_empty(device="cpu").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    return model


def test_hybrid_forward_non_square() -> None:
    """The real DPT-Hybrid (ResNet taps + ViT taps) at a small non-square size."""
    model = _random_hybrid()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 64, 96)


def test_low_precision_norms_switch_every_norm_and_change_nothing_outside_autocast() -> None:
    from lvit.models.dpt import set_low_precision_norms

    model = _random_hybrid()
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    layer_norms = {m for m in norms if isinstance(m, nn.LayerNorm)}
    out_dtypes: dict[nn.Module, torch.dtype] = {}
    for norm in norms:
        norm.register_forward_hook(lambda module, args, out: out_dtypes.__setitem__(module, out.dtype))
    x = torch.randn(1, 3, 64, 64)

    def finest_fusion(low_precision: bool, autocast: bool) -> torch.Tensor:
        assert set_low_precision_norms(model, low_precision) == len(norms)  # the ResNet's GNs, the ViT's LNs
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model.forward_features(x)[-1].float()

    assert len(norms) > 50 and layer_norms
    assert torch.equal(finest_fusion(True, autocast=False), finest_fusion(False, autocast=False))
    out_dtypes.clear()
    default = finest_fusion(False, autocast=True)
    ran = set(out_dtypes)  # not the final norm nor the blocks after the last tap
    assert {out_dtypes[m] for m in ran & layer_norms} == {torch.float32}  # autocast's choice for layer_norm
    low = finest_fusion(True, autocast=True)
    assert set(out_dtypes) == ran and set(out_dtypes.values()) == {torch.bfloat16}
    assert (low - default).abs().max() <= 0.05 * default.abs().max()  # bf16 rounding, not another function


def test_backbone_taps_match_timm_at_native_size() -> None:
    """Our backbone forward (official forward_flex) equals timm's own intermediates at the native size."""
    model = lvit.create_model("dpt_tiny", backbone_kwargs=dict(img_size=64)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps, grid = model.forward_taps(x)
        ours = model.backbone.forward_intermediates(
            x, indices=[2, 5, 8, 11], norm=False, return_prefix_tokens=True, intermediates_only=True
        )
    assert grid == (4, 4)
    for tokens, (spatial, prefix) in zip(taps, ours, strict=True):
        torch.testing.assert_close(tokens[:, :1], prefix)
        torch.testing.assert_close(tokens[:, 1:], spatial.flatten(2).transpose(1, 2))


def test_bad_input_size_names_nearest_valid_sizes() -> None:
    model = _micro()
    with pytest.raises(ValueError, match=r"multiples of 32; got 384x400.*384x384, 384x416"):
        model(torch.randn(1, 3, 384, 400))


def test_unknown_readout_and_task_name_the_choices() -> None:
    with pytest.raises(ValueError, match="ignore, add, project"):
        _micro(readout="mean")
    with pytest.raises(ValueError, match="depth, segmentation"):
        _micro(task="normals")


def test_read_operations() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(2, 1 + 6, 4)
    patches, cls = tokens[:, 1:], tokens[:, :1]
    torch.testing.assert_close(ReadIgnore()(tokens), patches)
    torch.testing.assert_close(ReadAdd()(tokens), patches + cls)
    project = ReadProject(4)
    with torch.no_grad():  # zero the weights acting on the second half: the output must ignore the cls token
        project.project[0].weight[:, 4:] = 0
    changed_cls = torch.cat([cls + 1, patches], dim=1)
    torch.testing.assert_close(project(tokens), project(changed_cls))
    torch.testing.assert_close(project(tokens), torch.nn.functional.gelu(project.project[0](
        torch.cat([patches, torch.zeros_like(patches)], -1))))


@pytest.mark.parametrize(("readout", "depends_on_cls"), [("ignore", False), ("add", True), ("project", True)])
def test_output_depends_on_readout_token_only_when_read_uses_it(readout: str, depends_on_cls: bool) -> None:
    """Perturb the class token of the last tapped block's output (nothing downstream in the ViT sees it)."""
    torch.manual_seed(0)
    model = _micro(readout=readout).eval()
    x = torch.randn(1, 3, 64, 64)

    def bump_cls(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, :1] + 1.0, out[:, 1:]], dim=1)

    with torch.no_grad():  # compare the decoder output: the random head's final ReLU may zero everything
        reference = model.forward_features(x)[-1]
        handle = model.backbone.blocks[3].register_forward_hook(bump_cls)
        bumped = model.forward_features(x)[-1]
        handle.remove()
    assert torch.equal(reference, bumped) is not depends_on_cls


def test_every_trainable_parameter_gets_a_gradient() -> None:
    """What DDP without find_unused_parameters needs; the unused official parameters are frozen."""
    for task in ("depth", "segmentation"):
        model = _micro(task=task, num_classes=3).train()
        out = model(torch.randn(2, 3, 64, 64))
        sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == []
        frozen = {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen == {"backbone.norm", "backbone.head", "fusion.3"}
        assert all(n.startswith("fusion.3.residual_unit1.") for n in model.unused_parameter_names()
                   if n.startswith("fusion"))


def test_refinenet4_first_unit_is_unused_and_refinenet1_first_unit_is_used() -> None:
    torch.manual_seed(0)
    model = _micro().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model.forward_features(x)[-1]
        model.fusion[3].residual_unit1.conv1.weight.add_(1.0)
        assert torch.equal(model.forward_features(x)[-1], reference)
        model.fusion[0].residual_unit1.conv1.weight.add_(1.0)
        assert not torch.equal(model.forward_features(x)[-1], reference)


def test_two_models_in_one_process_are_independent() -> None:
    torch.manual_seed(0)
    a, b = _micro().eval(), _micro().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        alone = a.forward_features(x)[-1]
        b(torch.randn(1, 3, 64, 96))
        assert torch.equal(a.forward_features(x)[-1], alone)


def test_load_backbone_from_classification_checkpoint() -> None:
    classifier = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, num_classes=7)
    model = lvit.create_model("dpt_tiny", backbone_kwargs=dict(img_size=64, patch_size=8))
    model.requires_grad_(True)  # as a user's fine-tuning setup might; loading freezes the unused head again
    model.load_backbone(classifier.state_dict())
    torch.testing.assert_close(model.backbone.blocks[3].attn.qkv.weight, classifier.blocks[3].attn.qkv.weight)
    assert not model.backbone.head.weight.requires_grad
    with torch.no_grad():  # patch 8: inputs are multiples of 16 and the output is at input resolution
        assert model.eval()(torch.randn(1, 3, 48, 80)).shape == (1, 48, 80)
    grey = lvit.create_model("dpt_tiny", in_chans=1, backbone_kwargs=dict(img_size=64, patch_size=8))
    grey.load_backbone(classifier.state_dict())  # an RGB backbone file: its stem summed, as timm adapts it
    rgb_stem = classifier.patch_embed.proj.weight
    torch.testing.assert_close(grey.backbone.patch_embed.proj.weight, rgb_stem.sum(1, keepdim=True))
    smaller = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=7)
    model.load_backbone(smaller.state_dict())  # a 4x4 grid of position embeddings, resampled to 8x8
    expected = resample_abs_pos_embed(smaller.pos_embed, new_size=(8, 8), num_prefix_tokens=1)  # timm's rule
    torch.testing.assert_close(model.backbone.pos_embed, expected)
    torch.testing.assert_close(model.backbone.cls_token, smaller.cls_token)


def test_localvit_backbone_non_square() -> None:
    model = lvit.create_model("dpt_localvit_tiny").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 64, 96)


def _to_hf_layout(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The HF ``DPTFor*`` key layout of an official ViT state_dict, written from dpt.md §7's table."""
    steps = [
        (r"^pretrained\.model\.head\..*", None),  # HF drops the ImageNet head
        (r"^pretrained\.model\.cls_token", "dpt.embeddings.cls_token"),
        (r"^pretrained\.model\.pos_embed", "dpt.embeddings.position_embeddings"),
        (r"^pretrained\.model\.patch_embed\.proj", "dpt.embeddings.patch_embeddings.projection"),
        (r"^pretrained\.model\.norm", "dpt.layernorm"),
        (r"^pretrained\.model\.blocks\.", "dpt.encoder.layer."),
        (r"\.norm1\.", ".layernorm_before."), (r"\.norm2\.", ".layernorm_after."),
        (r"\.attn\.proj\.", ".attention.output.dense."), (r"\.mlp\.fc1\.", ".intermediate.dense."),
        (r"\.mlp\.fc2\.", ".output.dense."),
        (r"^pretrained\.act_postprocess(\d)\.0\.project\.0",
         lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0"),
        (r"^pretrained\.act_postprocess(\d)\.3",
         lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection"),
        (r"^pretrained\.act_postprocess(\d)\.4",
         lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.resize"),
        (r"^scratch\.layer(\d)_rn", lambda m: f"neck.convs.{int(m[1]) - 1}"),
        (r"^scratch\.refinenet(\d)", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}"),
        (r"\.out_conv\.", ".projection."), (r"\.resConfUnit", ".residual_layer"),
        (r"\.conv(\d)\.", r".convolution\1."), (r"\.bn(\d)\.", r".batch_norm\1."),
        (r"^scratch\.output_conv\.", "head.head."), (r"^auxlayer\.", "auxiliary_head.head."),
    ]
    hf = {}
    for key, value in official.items():
        for pattern, replacement in steps:
            if key is not None and re.search(pattern, key):
                key = None if replacement is None else re.sub(pattern, replacement, key)
        if key is None:
            continue
        if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            for name, part in zip(("query", "key", "value"), value.chunk(3), strict=True):
                hf[key.replace("attn.qkv", f"attention.attention.{name}")] = part
        else:
            hf[key] = value
    return hf


@pytest.mark.parametrize(("file", "name", "task"), [
    ("depth_base", "dpt_base", "depth"), ("seg_large", "dpt_large", "segmentation"),
])
def test_huggingface_layout_loads_strictly(file: str, name: str, task: str) -> None:
    hf = _to_hf_layout(_official_state_dict(file, device="meta"))
    assert "dpt.encoder.layer.0.attention.attention.query.weight" in hf and "neck.convs.3.weight" in hf
    model = _meta_model(name, task=task)
    model.load_state_dict(checkpoint_filter_fn(hf, model), strict=True, assign=True)


def test_huggingface_qkv_order_and_fusion_index() -> None:
    dim = 4
    hf = {f"dpt.encoder.layer.0.attention.attention.{p}.weight": torch.full((dim, dim), float(i))
          for i, p in enumerate(("query", "key", "value"))}
    hf |= {f"dpt.encoder.layer.0.attention.attention.{p}.bias": torch.full((dim,), float(i))
           for i, p in enumerate(("query", "key", "value"))}
    hf["neck.fusion_stage.layers.0.projection.weight"] = torch.zeros(1)  # HF layer 0 is refinenet4
    converted = checkpoint_filter_fn(hf)
    qkv = converted["backbone.blocks.0.attn.qkv.weight"]
    assert qkv.shape == (3 * dim, dim)
    assert qkv[:dim].eq(0).all() and qkv[dim : 2 * dim].eq(1).all() and qkv[2 * dim :].eq(2).all()
    assert converted["backbone.blocks.0.attn.qkv.bias"].tolist() == [0.0] * dim + [1.0] * dim + [2.0] * dim
    assert "fusion.3.out_conv.weight" in converted


def test_load_pretrained_uses_the_dpt_filter_and_is_strict() -> None:
    from lvit.models.convert import CheckpointMismatchError

    official = _official_state_dict("depth_base", device="meta")
    lvit.load_pretrained(_meta_model("dpt_base"), official)
    del official["scratch.refinenet4.resConfUnit1.conv2.bias"]  # an unused parameter is still required
    with pytest.raises(CheckpointMismatchError, match=r"fusion\.3\.residual_unit1\.conv2\.bias"):
        lvit.load_pretrained(_meta_model("dpt_base"), official)


def test_hybrid_pads_no_pointwise_conv_and_computes_the_same(monkeypatch) -> None:
    """timm's SAME padding of the ResNet's 1x1 shortcut convs is a copy through F.pad that adds nothing."""
    import torch.nn.functional as F
    from timm.layers import StdConv2dSame

    from lvit.models.dpt import skip_pointwise_same_padding

    model = _random_hybrid()
    pads = []
    native_pad = F.pad

    def recorded_pad(x: torch.Tensor, pad: tuple[int, ...], *args, **kwargs) -> torch.Tensor:
        pads.append(tuple(pad))
        return native_pad(x, pad, *args, **kwargs)

    monkeypatch.setattr(F, "pad", recorded_pad)
    x = torch.randn(1, 3, 64, 96)
    pointwise = [m for m in model.modules() if isinstance(m, StdConv2dSame) and m.kernel_size == (1, 1)]
    with torch.no_grad():
        ours = model.forward_features(x)[-1]
        assert pads and all(any(pad) for pad in pads)  # the stem and the strided 3x3 convs still pad
        for conv in pointwise:
            conv.same_pad = True
        padded = model.forward_features(x)[-1]
        assert (0, 0, 0, 0) in pads
        assert skip_pointwise_same_padding(model) == len(pointwise) > 0
        assert torch.equal(ours, padded)
        # inside DPT the shortcut convs see even sides only; odd ones pad nothing either
        conv = StdConv2dSame(4, 8, kernel_size=1, stride=2)
        for side in (7, 9, 10):
            feature_map = torch.randn(1, 4, side, side + 2)
            conv.same_pad = True
            padded = conv(feature_map)
            assert skip_pointwise_same_padding(conv) == 1 and torch.equal(conv(feature_map), padded)


@pytest.mark.parametrize(("name", "kwargs", "size"), [
    ("dpt_tiny", {}, 384),
    ("dpt_hybrid", {}, 384),
    ("dpt_localvit_tiny", dict(task="segmentation"), 480),
    ("dpt_large.segmentation", {}, 480),  # the tag picks the task
])
def test_timm_data_config_is_the_official_preprocessing(name: str, kwargs: dict, size: int) -> None:
    # dpt.md §2.8: mean = std = 0.5, bicubic, 384 (depth) / 480 (segmentation), no centre crop.
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    config = timm.data.resolve_data_config({}, model=model)
    assert config == dict(input_size=(3, size, size), interpolation="bicubic", mean=(0.5, 0.5, 0.5),
                          std=(0.5, 0.5, 0.5), crop_pct=1.0, crop_mode="center")
    assert model.task == ("depth" if size == 384 else "segmentation")


def test_data_config_tag_contradicting_task_is_refused() -> None:
    with pytest.raises(ValueError, match="segmentation preprocessing, but task='depth'"):
        timm.create_model("dpt_tiny.segmentation", task="depth")


_CHECKPOINTED = {  # name: (DPT kwargs, torch.utils.checkpoint calls per forward)
    "dpt_tiny": (MICRO_DPT, 4),
    "dpt_localvit_tiny": (
        dict(MICRO_DPT, backbone_kwargs=dict(depth=5, embed_dim=32, num_heads=2, se_reduction=4)), 4),
    # 2 ViT blocks and the ResNet's 3 + 4 + 9 blocks (timm checkpoints each of them in its stage)
    "dpt_hybrid": (dict(block_taps=(0, 1), reassemble_channels=(256, 512, 32, 32), features=16,
                        backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2)), 2 + 16),
}


@pytest.mark.parametrize("name", sorted(_CHECKPOINTED))
def test_grad_checkpointing_recomputes_blocks_with_equal_results(name: str, checkpoint_calls) -> None:
    kwargs, expected_calls = _CHECKPOINTED[name]
    torch.manual_seed(0)
    model = lvit.create_model(name, **kwargs).train()
    x = torch.randn(2, 3, 64, 64)

    def output_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain_out, plain_grads = output_and_grads()
    assert not checkpoint_calls
    model.set_grad_checkpointing(True)
    checkpointed_out, checkpointed_grads = output_and_grads()
    assert len(checkpoint_calls) == expected_calls
    torch.testing.assert_close(checkpointed_out, plain_out, rtol=0, atol=0)
    assert len(checkpointed_grads) == len(plain_grads)
    for checkpointed, plain in zip(checkpointed_grads, plain_grads, strict=True):
        torch.testing.assert_close(checkpointed, plain)


def test_timm_optimizer_does_not_decay_backbone_embeddings() -> None:
    model = _micro()
    optimizer = create_optimizer_v2(model, "adamw", weight_decay=0.05)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay_of[id(model.backbone.pos_embed)] == 0.0
    assert decay_of[id(model.backbone.cls_token)] == 0.0
    assert decay_of[id(model.backbone.patch_embed.proj.weight)] == 0.05  # conv weights still decay


def test_whole_model_load_of_a_backbone_checkpoint_points_to_load_backbone() -> None:
    model = _micro()
    classification = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"DPT\.load_backbone\(state_dict\)"):
        lvit.load_pretrained(model, classification)
    classification.pop("head.weight")  # not the backbone's keys exactly: no hint, only the listing
    with pytest.raises(CheckpointMismatchError) as error:
        lvit.load_pretrained(model, classification)
    assert "load_backbone" not in str(error.value)


def test_timms_backbone_keywords_configure_the_dpt_backbone() -> None:
    model = timm.create_model("dpt_tiny", in_chans=1, drop_path_rate=0.1, img_size=128,
                              backbone_kwargs={"qkv_bias": False}).eval()  # fmt: skip
    backbone = model.backbone
    assert backbone.patch_embed.proj.in_channels == 1 and backbone.patch_embed.img_size == (128, 128)
    assert backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert backbone.blocks[0].attn.qkv.bias is None  # backbone_kwargs still reach it beside them
    with torch.no_grad():
        assert model(torch.randn(1, 1, 128, 128)).shape == (1, 128, 128)


def test_reset_classifier_gives_segmentation_a_new_class_count_and_keeps_every_other_weight() -> None:
    torch.manual_seed(0)
    model = _micro(task="segmentation", num_classes=5)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    heads = ("head.4.", "aux_head.4.")  # the classifier convs, as pretrained_cfg names them
    assert model.pretrained_cfg["classifier"] == ("head.4", "aux_head.4")
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier() is model.head[4]
    assert model.head[4].weight.shape == model.aux_head[4].weight.shape == (7, 16, 1, 1)
    reset = model.state_dict()
    assert reset.keys() == original.keys()
    assert all(torch.equal(reset[k], v) for k, v in original.items() if not k.startswith(heads))
    new_head = {k: v.clone() for k, v in reset.items() if k.startswith(heads)}
    x = torch.randn(2, 3, 64, 64)
    out, aux = model.train()(x)
    assert out.shape == aux.shape == (2, 7, 64, 64)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 7, 64, 64)
    with pytest.raises(CheckpointMismatchError, match="only the classifier differs"):
        lvit.load_pretrained(model, original)
    lvit.load_pretrained(model, original, new_head=True)  # a 5-class checkpoint into the 7-class model
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in original.items() if not k.startswith(heads))
    assert all(torch.equal(loaded[k], v) for k, v in new_head.items())
    model.reset_classifier(0)  # timm's "no classifier": the heads give the fusion features
    assert isinstance(model.get_classifier(), nn.Identity)
    with torch.no_grad():
        assert model(x).shape == (2, 16, 64, 64)


def test_a_depth_dpt_has_no_classifier_to_reset() -> None:
    model = _micro()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
    model.reset_classifier(0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="depth DPT has no classifier.*task='segmentation'"):
        model.reset_classifier(3)
