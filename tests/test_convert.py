"""Strict loading of official LocalViT checkpoints (key layout from reference localvit.md §1.6)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_dpt import MICRO_DPT
from timm.layers import resample_abs_pos_embed

import lvit
from lvit.models.convert import CheckpointMismatchError, checkpoint_filter_for, load_pretrained
from lvit.models.localvit import checkpoint_filter_fn

pytestmark = pytest.mark.usefixtures("single_thread")


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    names = ("weight", "bias", "running_mean", "running_var")
    return {f"{prefix}.{name}": (channels,) for name in names} | {f"{prefix}.num_batches_tracked": ()}


def official_localvit_tiny_shapes(attention: str = "se") -> dict[str, tuple[int, ...]]:
    """The official LocalViT-T state_dict, transcribed from reference §1.6 (not from lvit's model)."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, 192), "pos_embed": (1, 197, 192),
        "patch_embed.proj.weight": (192, 3, 16, 16), "patch_embed.proj.bias": (192,),
        "norm.weight": (192,), "norm.bias": (192,), "head.weight": (1000, 192), "head.bias": (1000,),
    }
    for i in range(12):
        b = f"blocks.{i}"
        shapes |= {f"{b}.norm1.weight": (192,), f"{b}.norm1.bias": (192,),
                   f"{b}.attn.qkv.weight": (576, 192), f"{b}.attn.qkv.bias": (576,),
                   f"{b}.attn.proj.weight": (192, 192), f"{b}.attn.proj.bias": (192,),
                   f"{b}.conv.conv.0.weight": (768, 192, 1, 1), f"{b}.conv.conv.3.weight": (768, 1, 3, 3),
                   f"{b}.conv.conv.7.weight": (192, 768, 1, 1)}
        shapes |= _bn(f"{b}.conv.conv.1", 768) | _bn(f"{b}.conv.conv.4", 768) | _bn(f"{b}.conv.conv.8", 192)
        if attention == "se":
            shapes |= {f"{b}.conv.conv.6.fc.0.weight": (4, 768), f"{b}.conv.conv.6.fc.0.bias": (4,),
                       f"{b}.conv.conv.6.fc.2.weight": (768, 4), f"{b}.conv.conv.6.fc.2.bias": (768,)}
        else:
            shapes |= {f"{b}.conv.conv.6.conv.weight": (1, 1, 5)}
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randint(0, 100, s) if k.endswith("num_batches_tracked")
            else torch.randn(s, generator=generator) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return random_state_dict(official_localvit_tiny_shapes())


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_official_layout_has_344_entries(official: dict) -> None:
    assert len(official) == 344  # reference §1.6


def test_official_release_file_loads_strictly(tmp_path: Path, official: dict) -> None:
    # A DeiT-style training checkpoint: the weights under "model", plus EMA and the training args.
    ema = {k: torch.zeros_like(v) for k, v in official.items()}
    path = tmp_path / "localvit_t.pth"
    torch.save({"model": official, "model_ema": ema, "epoch": 299, "args": argparse.Namespace(lr=1e-3)}, path)
    model = lvit.load_pretrained(lvit.create_model("localvit_tiny"), path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in official.items())  # the non-EMA weights


def test_eca_variant_layout_loads() -> None:
    state_dict = random_state_dict(official_localvit_tiny_shapes("eca"))
    model = load_pretrained(lvit.create_model("localvit_tiny", attn="eca"), state_dict)
    eca_weight = state_dict["blocks.3.conv.conv.6.conv.weight"]
    assert torch.equal(model.blocks[3].conv.conv[6].conv.weight, eca_weight)


def test_plain_state_dict_safetensors_and_ddp_prefix(tmp_path: Path, official: dict) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v for k, v in official.items()}, str(path))
    model = load_pretrained(lvit.create_model("localvit_tiny"), path)
    assert torch.equal(model.head.weight, official["head.weight"])


def test_position_embedding_resampled_for_another_resolution(official: dict) -> None:
    model = load_pretrained(lvit.create_model("localvit_tiny", img_size=(160, 224)), official)
    assert model.pos_embed.shape == (1, 1 + 10 * 14, 192)
    assert torch.equal(model.pos_embed[:, 0], official["pos_embed"][:, 0])  # class token entry kept


def test_wrong_checkpoint_lists_keys_and_loads_nothing(official: dict) -> None:
    model = lvit.create_model("localvit_tiny")
    before = _snapshot(model)
    wrong = dict(official, extra_weight=torch.zeros(3))
    del wrong["head.bias"]
    wrong["blocks.0.conv.conv.6.fc.0.weight"] = torch.zeros(192, 768)  # an SE-4 layer
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(model, wrong)
    message = str(info.value)
    assert "missing keys: head.bias" in message and "unexpected keys: extra_weight" in message
    assert "blocks.0.conv.conv.6.fc.0.weight (192, 768) vs model (4, 768)" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_other_variant_file_is_refused(official: dict) -> None:
    model = lvit.create_model("localvit_tiny_mlp6")
    before = _snapshot(model)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_pretrained(model, official)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    model = lvit.create_model("localvit_tiny", embed_dim=48, depth=1, num_heads=2)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_pretrained(model, corrupt)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(model, tmp_path / "missing.pth")


def test_untrusted_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Path("x")}, path)  # an arbitrary class
    with pytest.raises(ValueError, match="weights_only"):
        load_pretrained(lvit.create_model("localvit_tiny", embed_dim=48, depth=1, num_heads=2), path)


def test_family_filter_lookup() -> None:
    assert checkpoint_filter_for(lvit.create_model("localvit_tiny", embed_dim=48, depth=1, num_heads=2)) \
        is checkpoint_filter_fn


@pytest.mark.parametrize("name", ["pvt_tiny", "localvit_pvt_tiny"])
def test_pvt_position_embeddings_resampled_per_stage(name: str, tmp_path: Path) -> None:
    small = dict(_SMALL["pvt_tiny"][0], num_classes=3)
    built_224 = lvit.create_model(name, **small).eval()
    torch.save({"model": built_224.state_dict()}, tmp_path / "pvt_224.pth")
    model = load_pretrained(lvit.create_model(name, img_size=256, **small), tmp_path / "pvt_224.pth").eval()
    for stage, (grid, prefix) in enumerate([(64, 0), (32, 0), (16, 0), (8, 1)], start=1):
        expected = resample_abs_pos_embed(getattr(built_224, f"pos_embed{stage}"), (grid, grid),
                                          num_prefix_tokens=prefix)  # the last stage's class token is kept
        torch.testing.assert_close(getattr(model, f"pos_embed{stage}"), expected, rtol=0, atol=0)
    # ... so the 256 model computes what the 224 model computes at 256 (it resamples the same way per forward)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(model(x), built_224(x))


def test_new_head_starts_fine_tuning_with_the_models_own_classifier(official: dict) -> None:
    with pytest.raises(CheckpointMismatchError, match=r"only the classifier differs .*new_head=True.*"
                       r"head\.weight \(1000, 192\) vs model \(10, 192\)"):
        load_pretrained(lvit.create_model("localvit_tiny", num_classes=10), official)
    for classes in (10, 0):
        model = lvit.create_model("localvit_tiny", num_classes=classes)
        fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
        load_pretrained(model, official, new_head=True)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in official.items() if not k.startswith("head."))
        assert all(torch.equal(loaded[k], v) for k, v in fresh_head.items())  # the model's own head stays
    broken = {k: v for k, v in official.items() if k != "blocks.0.attn.qkv.weight"}  # the rest stays strict
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys: blocks\.0\.attn\.qkv\.weight$"):
        load_pretrained(lvit.create_model("localvit_tiny", num_classes=10), broken, new_head=True)
    with pytest.raises(ValueError, match="names no classifier"):
        load_pretrained(lvit.create_model("dpt_tiny"), {}, new_head=True)


_SMALL = {  # name: (keywords of a small model, the name of its first conv)
    "localvit_tiny": (dict(embed_dim=48, depth=1, num_heads=2), "patch_embed.proj"),
    "pvt_tiny": (dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1)),
                 "patch_embed1.proj"),
    "dpt_tiny": (MICRO_DPT, "backbone.patch_embed.proj"),
}


@pytest.mark.parametrize("in_chans", [1, 2])
@pytest.mark.parametrize("name", sorted(_SMALL))
def test_an_rgb_checkpoint_loads_into_another_in_chans_with_its_first_conv_adapted(name: str, in_chans: int):
    kwargs, first_conv = _SMALL[name]
    torch.manual_seed(0)
    rgb = lvit.create_model(name, **kwargs).state_dict()
    model = lvit.create_model(name, in_chans=in_chans, **kwargs)
    assert model.pretrained_cfg["first_conv"] == first_conv
    load_pretrained(model, rgb)
    key, loaded = f"{first_conv}.weight", model.state_dict()
    # timm's rules: grey input sums the RGB filters; other counts repeat them and rescale by 3 / in_chans
    expected = (rgb[key].sum(dim=1, keepdim=True) if in_chans == 1
                else rgb[key].repeat(1, 2, 1, 1)[:, :in_chans] * (3 / in_chans))
    torch.testing.assert_close(loaded[key], expected, rtol=1e-6, atol=0)
    assert all(torch.equal(loaded[k], v) for k, v in rgb.items() if k != key)


@pytest.mark.parametrize("first_conv_shape", [(48, 3, 8, 8), (24, 3, 16, 16)])  # another patch, another width
def test_only_the_input_channels_of_the_first_conv_are_adapted(first_conv_shape: tuple[int, ...]) -> None:
    kwargs, _ = _SMALL["localvit_tiny"]
    rgb = lvit.create_model("localvit_tiny", **kwargs).state_dict()
    model = lvit.create_model("localvit_tiny", in_chans=1, **kwargs)
    before = _snapshot(model)
    other_stem = dict(rgb, **{"patch_embed.proj.weight": torch.randn(first_conv_shape)})
    listed = rf"patch_embed\.proj\.weight {re.escape(str(first_conv_shape))} vs model \(48, 1, 16, 16\)"
    with pytest.raises(CheckpointMismatchError, match=listed):  # listed as it is, not adapted
        load_pretrained(model, other_stem)
    grey = lvit.create_model("localvit_tiny", in_chans=1, **kwargs).state_dict()
    inner = dict(grey, **{"blocks.0.conv.conv.0.weight": torch.randn(192, 24, 1, 1)})  # not a first conv
    with pytest.raises(CheckpointMismatchError, match=r"1 shape mismatches: blocks\.0\.conv\.conv\.0\."):
        load_pretrained(model, inner)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_dpt_hybrid_names_its_resnet_stem_as_the_first_conv_and_adapts_it() -> None:
    with torch.device("meta"):  # shapes only: the values are checked on the small models above
        rgb = lvit.create_model("dpt_hybrid").state_dict()
        model = lvit.create_model("dpt_hybrid", in_chans=1)
    assert model.pretrained_cfg["first_conv"] == "backbone.patch_embed.backbone.stem.conv"
    load_pretrained(model, rgb)
    assert model.backbone.patch_embed.backbone.stem.conv.weight.shape == (64, 1, 7, 7)
