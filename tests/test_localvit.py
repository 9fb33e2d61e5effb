"""LocalViT family: structure and parameter counts of the official code (reference localvit.md §1)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models.vision_transformer import Block

import lvit
from lvit.data.transforms import deit_eval_transform
from lvit.models.locality import ECALayer, HSwish, LocalityFeedForward, SELayer, apply_to_patch_tokens
from lvit.models.localvit import LocalityBlock

# Parameter counts of the official code (reference §1.5), keyed by lvit name.
OFFICIAL_PARAMS = {
    "localvit_tiny": 5_908_696,
    "localvit_tiny_se4": 9_376_168,
    "localvit_tiny_mlp6": 7_655_080,
    "localvit_small": 22_433_176,
    "localvit_pvt_tiny": 13_456_152,
    "localvit_tnt_tiny": 6_261_064,
    "deit_tiny_mlp6": 7_491_496,
    "pvt_tiny": 13_229_288,
    "tnt_tiny_patch16_224": 6_069_784,
    "deit_tiny_patch16_224": 5_717_416,  # timm's own, the baseline of the tables
}

# A small DeiT-based LocalViT for the behavioural tests (shape logic is independent of width/depth).
SMALL = dict(embed_dim=48, depth=2, num_heads=2, num_classes=5)

pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_equals_official(name: str) -> None:
    with torch.device("meta"):
        model = lvit.create_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == OFFICIAL_PARAMS[name]


def test_every_issue_name_is_registered() -> None:
    assert set(OFFICIAL_PARAMS) - {"deit_tiny_patch16_224"} <= set(lvit.lvit_model_names())


def test_locality_feed_forward_layer_order_matches_official() -> None:
    # Reference §1.2 index tables: hs+SE; ReLU6 without SE (indices shift); wo_dp_conv (DW block removed).
    hs_se = LocalityFeedForward(192, 4.0, act="hswish", attn="se", se_reduction=192).conv
    assert [type(m) for m in hs_se] == [nn.Conv2d, nn.BatchNorm2d, HSwish, nn.Conv2d, nn.BatchNorm2d, HSwish,
                                        SELayer, nn.Conv2d, nn.BatchNorm2d]
    assert hs_se[3].groups == 768 and hs_se[3].kernel_size == (3, 3)
    assert all(m.bias is None for m in hs_se if isinstance(m, nn.Conv2d))
    relu6 = LocalityFeedForward(192, 6.0, act="relu6", attn="none").conv
    assert [type(m) for m in relu6] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, nn.Conv2d, nn.BatchNorm2d,
                                        nn.ReLU6, nn.Conv2d, nn.BatchNorm2d]
    no_dw = LocalityFeedForward(192, 4.0, dw=False, act="relu6", attn="se").conv
    assert [type(m) for m in no_dw] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, SELayer, nn.Conv2d,
                                        nn.BatchNorm2d]


def test_se_reduction_is_a_ratio_and_eca_kernel() -> None:
    # "SE-192" on 768 hidden channels has 4 hidden units, "SE-4" has 192; ECA on 768 channels has k=5.
    assert SELayer(768, 192).fc[0].out_features == 4
    assert SELayer(768, 4).fc[0].out_features == 192
    assert ECALayer(768).conv.kernel_size == (5,)


def test_hswish_formula() -> None:
    x = torch.linspace(-5, 5, 101)
    assert torch.allclose(HSwish()(x.clone()), x * torch.clamp(x + 3, 0, 6) / 6)


def test_residual_is_inside_the_feed_forward() -> None:
    ffn = LocalityFeedForward(8, 2.0).eval()
    nn.init.zeros_(ffn.conv[-1].weight)  # last BN scale 0: the body outputs 0, so the module is the identity
    nn.init.zeros_(ffn.conv[-1].bias)
    x = torch.randn(2, 8, 3, 5)
    assert torch.equal(ffn(x), x)


def test_locality_block_structure_and_placement() -> None:
    model = lvit.create_model("localvit_tiny", locality_layers=(0, 3), **dict(SMALL, depth=4))
    kinds = [type(b) for b in model.blocks]
    assert kinds == [LocalityBlock, Block, Block, LocalityBlock]
    local = model.blocks[0]
    assert not hasattr(local, "norm2") and not hasattr(local, "mlp") and not hasattr(local, "drop_path2")
    assert hasattr(model.blocks[1], "norm2") and hasattr(model.blocks[1], "mlp")


def test_official_initialisation() -> None:
    torch.manual_seed(0)
    model = lvit.create_model("localvit_tiny", **dict(SMALL, depth=1))
    # timm 0.3.2: cls_token trunc-normal(.02) (modern timm uses std 1e-6); Linear biases 0; last BN weight 1.
    assert 0.01 < model.cls_token.std().item() < 0.03
    assert torch.count_nonzero(model.blocks[0].conv.conv[6].fc[0].bias) == 0
    assert 0.01 < model.blocks[0].conv.conv[6].fc[0].weight.std().item() < 0.03
    assert torch.equal(model.blocks[0].conv.conv[8].weight, torch.ones(48))


def _reference_block(block: LocalityBlock, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The official Block.forward (reference §1.3), written with plain reshapes."""
    x = x + block.attn(block.norm1(x))
    cls, patches = x[:, :1], x[:, 1:]
    b, _, c = patches.shape
    image = patches.transpose(1, 2).reshape(b, c, *grid)
    patches = block.conv(image).flatten(2).transpose(1, 2)
    return torch.cat([cls, patches], dim=1)


def test_block_matches_official_forward_on_a_non_square_grid() -> None:
    torch.manual_seed(0)
    model = lvit.create_model("localvit_tiny", img_size=(32, 48), patch_size=16, **SMALL).eval()
    block = model.blocks[0]
    block.grid_size = (2, 3)
    x = torch.randn(2, 1 + 6, 48)
    assert torch.allclose(block(x), _reference_block(block, x, (2, 3)), atol=1e-6)


def test_class_token_bypasses_the_feed_forward() -> None:
    torch.manual_seed(0)
    ffn = LocalityFeedForward(16, 2.0).eval()
    x = torch.randn(1, 1 + 12, 16)
    out = apply_to_patch_tokens(ffn, x, 1, (3, 4))
    perturbed = x.clone()
    perturbed[:, 1:] += torch.randn(1, 12, 16)
    out_perturbed = apply_to_patch_tokens(ffn, perturbed, 1, (3, 4))
    assert torch.equal(out[:, 0], x[:, 0])  # the class token leaves the FFN unchanged ...
    assert torch.equal(out_perturbed[:, 0], out[:, 0])  # ... whatever the patch tokens are
    assert not torch.allclose(out_perturbed[:, 1:], out[:, 1:])


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({}, (224, 224)),
        ({"dynamic_img_size": True}, (160, 224)),
        ({"img_size": (160, 224)}, (160, 224)),
        ({"dynamic_img_size": True, "class_token": False, "global_pool": "avg"}, (160, 224)),
        ({"dynamic_img_size": True, "reg_tokens": 2}, (96, 64)),
    ],
)
def test_forward_backward_at_multiples_of_the_patch(kwargs: dict, size: tuple[int, int]) -> None:
    model = lvit.create_model("localvit_tiny", **dict(SMALL, **kwargs))
    logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["pvt_tiny", "localvit_pvt_tiny"])
def test_pvt_forward_backward_at_another_resolution(name: str) -> None:
    small = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), num_classes=3)
    model = lvit.create_model(name, **small)  # built at 224
    logits = model(torch.randn(1, 3, 64, 96))  # position embeddings resampled per stage
    assert logits.shape == (1, 3)
    logits.sum().backward()


@pytest.mark.parametrize("name", ["pvt_tiny", "localvit_pvt_tiny"])
def test_pvt_grad_checkpointing_recomputes_every_block_equally(name: str, checkpoint_calls: list) -> None:
    small = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 2, 1, 2), num_classes=3)
    torch.manual_seed(0)
    model = lvit.create_model(name, **small).train()  # no dropout or drop-path by default: deterministic
    x = torch.randn(2, 3, 64, 64)

    def output_and_grads(forward) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        out = forward(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def last_stage_map(x: torch.Tensor) -> torch.Tensor:
        return model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]

    plain = [output_and_grads(model), output_and_grads(last_stage_map)]
    calls = checkpoint_calls
    model.set_grad_checkpointing(True)
    blocks = [block for stage in range(1, 5) for block in getattr(model, f"block{stage}")]
    for forward, (plain_out, plain_grads) in zip((model, last_stage_map), plain, strict=True):
        calls.clear()
        out, grads = output_and_grads(forward)
        assert calls == blocks  # each block of each stage, once, in order
        torch.testing.assert_close(out, plain_out, rtol=0, atol=0)
        assert grads.keys() == plain_grads.keys() and "patch_embed1.proj.weight" in grads
        for key, reference in plain_grads.items():
            torch.testing.assert_close(grads[key], reference, msg=key)
    calls.clear()
    model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert calls == blocks[:3]  # stages 1-2 only
    model.set_grad_checkpointing(False)
    model(x)
    assert calls == blocks[:3]


def test_localvit_tnt_forward_backward() -> None:
    model = lvit.create_model("localvit_tnt_tiny", img_size=64, embed_dim=48, depth=2, num_classes=3)
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(hasattr(b, "conv") and not hasattr(b, "mlp") for b in model.blocks)


def test_unknown_keyword_names_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="locality_layers") as info:
        lvit.create_model("localvit_tiny", se_ratio=4)
    assert "se_ratio" in str(info.value)


@pytest.mark.parametrize("layers", [(12,), (-1,), (0, 1.5)])
def test_locality_layers_out_of_range_is_an_error(layers: tuple) -> None:
    with pytest.raises(ValueError, match="0..11"):
        lvit.create_model("localvit_tiny", locality_layers=layers)


@pytest.mark.parametrize(("kwarg", "valid"), [({"act": "gelu"}, "hswish"), ({"attn": "cbam"}, "eca")])
def test_unknown_activation_or_attention_names_the_valid_ones(kwarg: dict, valid: str) -> None:
    with pytest.raises(ValueError, match=valid):
        lvit.create_model("localvit_tiny", **kwarg)


def test_unknown_model_name_names_lvit_models() -> None:
    with pytest.raises(ValueError, match="localvit_tiny"):
        lvit.create_model("localvit_tinyy")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_hard_activations_equal_the_written_out_formulas_and_gradients(dtype):
    from lvit.models.locality import HSigmoid

    x = (torch.randn(4096, dtype=torch.float64) * 4).to(dtype).requires_grad_()
    exact = x.detach().double().requires_grad_()  # the formulas in float64 on the same inputs
    written_out = ((HSwish(), lambda t: t * F.relu6(t + 3) / 6), (HSigmoid(), lambda t: F.relu6(t + 3) / 6))
    for module, formula in written_out:
        out = module(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
        ref = formula(exact)
        (ref_grad,) = torch.autograd.grad(ref.sum(), exact)
        assert out.dtype == dtype
        # tolerances of the module's dtype (bf16: 8 mantissa bits); random inputs never land on x = ±3
        torch.testing.assert_close(out, ref.to(dtype))
        torch.testing.assert_close(grad, ref_grad.to(dtype))


def test_localvit_tnt_data_config_is_the_deit_eval_it_was_evaluated_with() -> None:
    # localvit.md §3 "Eval": Resize 256 bicubic -> CenterCrop 224 -> ImageNet mean/std, for every backbone.
    with torch.device("meta"):
        model = lvit.create_model("localvit_tnt_tiny")
    timm_eval = create_transform(**resolve_data_config({}, model=model))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (300, 341, 3), dtype=torch.uint8, generator=generator)
    image = Image.fromarray(pixels.numpy())
    torch.testing.assert_close(timm_eval(image), deit_eval_transform(224)(image), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["deit_tiny_mlp6", "tnt_tiny_patch16_224", "localvit_tnt_tiny"])
def test_features_only_gives_the_selected_blocks_as_maps(name: str) -> None:
    model = timm.create_model(name, features_only=True, out_indices=(1, 3), img_size=64, depth=4)
    features = model(torch.randn(2, 3, 64, 64))
    assert [f.shape for f in features] == [(2, 192, 4, 4)] * 2
    assert model.feature_info.reduction() == [16, 16]


@pytest.mark.parametrize("name", ["pvt_tiny", "localvit_pvt_tiny"])
def test_pvt_features_only_gives_each_stage_as_a_map_and_the_last_is_the_normed_tokens(name: str) -> None:
    features = timm.create_model(name, features_only=True, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = features(x)
        model = features.model  # the whole PVT: its forward_intermediates give the maps
        tokens = model.forward_features(x)
        final, (last,) = model.forward_intermediates(x, indices=[3], norm=True)
    assert [tuple(f.shape) for f in maps] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 320, 4, 4), (2, 512, 2, 2)]
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    assert torch.equal(final, tokens)  # the features come from the classifier's own forward
    torch.testing.assert_close(last, rearrange(tokens[:, 1:], "b (h w) c -> b c h w", h=2))
    assert not torch.equal(maps[3], last)  # features_only maps are not normed (timm's default)
    with torch.no_grad():  # stopped early, the final output is the last stage run: stage 2's map
        final, (second,) = model.forward_intermediates(x, indices=[1], stop_early=True)
    assert torch.equal(final, second) and torch.equal(second, maps[1])
