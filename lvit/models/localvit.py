"""LocalViT on DeiT (Li et al., "LocalViT: Bringing Locality to Vision Transformers", arXiv 2104.05707).

Faithful to the official code (ofsoundof/LocalViT, built on timm 0.3.2) so that its released checkpoints
load unchanged: a locality block is timm's pre-norm attention block whose MLP is replaced by
:class:`~lvit.models.locality.LocalityFeedForward` (attribute ``conv``). There is no ``norm2``, no drop-path
on the feed-forward (the residual is inside it), and the class token bypasses it, so only attention
updates the class token. Blocks not listed in ``locality_layers`` are plain timm blocks, as in the
official placement ablation. Initialisation is timm 0.3.2's: Linear trunc-normal(.02) with zero bias,
LayerNorm (1, 0), ``pos_embed``/``cls_token`` trunc-normal(.02), convs and BN at PyTorch defaults.

Any input size that is a multiple of the patch size works with ``dynamic_img_size=True`` (position
embeddings resampled per forward) or by building the model at that ``img_size``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn

from lvit.models.locality import (
    ACTIVATIONS,
    CHANNEL_ATTENTIONS,
    Activation,
    ChannelAttention,
    LocalityFeedForward,
    apply_to_patch_tokens,
)

__all__ = ["LocalityBlock", "LocalVisionTransformer", "checkpoint_filter_fn", "init_weights_official"]


class LocalityBlock(Block):
    """timm's attention block with the locality feed-forward instead of ``norm2`` + MLP.

    ``grid_size`` (patch rows, cols) is set by the model before each forward, because timm's block API
    passes only the tokens; without it the patch grid is taken to be square, as in the official code.
    """

    def __init__(
        self,
        dim: int,
        *,
        mlp_ratio: float = 4.0,
        num_prefix_tokens: int = 1,
        dw: bool = True,
        act: Activation = "hswish",
        attn: ChannelAttention = "se",
        se_reduction: int = 4,
        **block_kwargs: Any,
    ) -> None:
        super().__init__(dim, mlp_ratio=mlp_ratio, **block_kwargs)
        # The official block has no second norm, no MLP and no drop-path/layer-scale on the feed-forward.
        del self.norm2, self.mlp, self.ls2, self.drop_path2
        self.conv = LocalityFeedForward(dim, mlp_ratio, dw=dw, act=act, attn=attn, se_reduction=se_reduction)
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size: tuple[int, int] | None = None

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        if self.conv.runs_fused(x):  # the class token's bypass in the fused kernels too
            return self.conv.forward_tokens(x, self.num_prefix_tokens, self.grid_size)
        return apply_to_patch_tokens(self.conv, x, self.num_prefix_tokens, self.grid_size)


def _make_block(depth: int, *, locality_layers: frozenset[int], locality_kwargs: dict[str, Any],
                **block_kwargs: Any) -> nn.Module:
    """``block_fn`` for timm's VisionTransformer, which passes each block's index as ``depth``."""
    if depth in locality_layers:
        return LocalityBlock(depth=depth, **locality_kwargs, **block_kwargs)
    return Block(depth=depth, **block_kwargs)


def init_weights_official(module: nn.Module) -> None:
    """timm 0.3.2 ``_init_weights``: Linear trunc-normal(.02), zero bias; LayerNorm (1, 0); rest untouched."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_VIT_KWARGS = frozenset(inspect.signature(VisionTransformer.__init__).parameters) - {
    "self", "block_fn", "weight_init"}
_LOCALITY_KWARGS = ("dw", "act", "attn", "se_reduction", "locality_layers")


class LocalVisionTransformer(VisionTransformer):
    """DeiT with the locality feed-forward in the blocks listed in ``locality_layers`` (default: all).

    Args:
        mlp_ratio: expansion ratio γ of every feed-forward (locality and plain).
        dw: with the depth-wise conv; False gives the 1x1-conv feed-forward.
        act: ``"relu6"`` | ``"hswish"``.
        attn: ``"none"`` | ``"se"`` | ``"eca"``. Through ``create_model`` write ``"none"``: timm drops
            None-valued kwargs, so ``attn=None`` would silently keep the variant's default.
        se_reduction: SE reduction ratio r (the paper's "SE-r").
        locality_layers: 0-based indices of the blocks with locality; None means every block.
        **kwargs: timm ``VisionTransformer`` arguments (img_size, patch_size, embed_dim, depth, num_heads,
            num_classes, drop_path_rate, class_token, global_pool, dynamic_img_size, ...).
    """

    def __init__(
        self,
        *,
        mlp_ratio: float = 4.0,
        dw: bool = True,
        act: Activation = "hswish",
        attn: ChannelAttention = "se",
        se_reduction: int = 4,
        locality_layers: Iterable[int] | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _VIT_KWARGS)
        if unknown:
            valid = ", ".join(sorted(_VIT_KWARGS | {"mlp_ratio", *_LOCALITY_KWARGS}))
            raise TypeError(f"unknown LocalViT argument(s) {', '.join(unknown)}; valid: {valid}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; valid: {', '.join(ACTIVATIONS)}")
        if attn not in CHANNEL_ATTENTIONS:
            raise ValueError(f"unknown attn {attn!r}; valid: {', '.join(map(str, CHANNEL_ATTENTIONS))}")
        depth = kwargs.get("depth", 12)
        layers = frozenset(range(depth)) if locality_layers is None else frozenset(locality_layers)
        if not all(isinstance(i, int) and 0 <= i < depth for i in layers):
            raise ValueError(
                f"locality_layers {sorted(layers, key=str)} out of range: valid indices 0..{depth - 1}")
        num_prefix_tokens = int(kwargs.get("class_token", True)) + kwargs.get("reg_tokens", 0)
        locality_kwargs = dict(dw=dw, act=act, attn=attn, se_reduction=se_reduction,
                               num_prefix_tokens=num_prefix_tokens)
        block_fn = partial(_make_block, locality_layers=layers, locality_kwargs=locality_kwargs)
        super().__init__(mlp_ratio=mlp_ratio, block_fn=block_fn, weight_init="skip", **kwargs)
        self.locality_layers = tuple(sorted(layers))
        self.init_weights()

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """The official initialisation (module docstring); ``mode`` is accepted for timm API compatibility."""
        for token in (self.pos_embed, self.cls_token, self.reg_token):
            if token is not None:
                trunc_normal_(token, std=0.02)
        self.apply(init_weights_official)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        # Every forward path (forward_features, forward_intermediates) passes here with the patch grid:
        # NHWC when dynamic_img_size, otherwise the fixed grid. Locality blocks need it to rebuild images.
        grid_size = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(self.patch_embed.grid_size)
        for block in self.blocks:
            if isinstance(block, LocalityBlock):
                block.grid_size = grid_size
        return super()._pos_embed(x)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official LocalViT files -> lvit: unwrap ``{'model': ...}``, resample ``pos_embed`` to the model's grid.

    The official key names are lvit's (verified by the reference rebuild), so nothing is renamed. The
    non-EMA ``model`` entry is taken on purpose: it is what the official evaluation reports.
    """
    state_dict = state_dict.get("model", state_dict)
    pos_embed = state_dict.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos_embed is not None and target is not None and pos_embed.shape != target.shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        state_dict = dict(state_dict, pos_embed=resample_abs_pos_embed(
            pos_embed, new_size=model.patch_embed.grid_size, num_prefix_tokens=prefix))
    return state_dict


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "paper_ids": "arXiv:2104.05707", "origin_url": "https://github.com/ofsoundof/LocalViT",
        "license": "apache-2.0", **kwargs,
    }


# Official release v1.0.0 files (not downloadable here): localvit_t.pth, localvit_t_se4.pth, localvit_s.pth.
# Load them with ``lvit.load_pretrained``, not timm's ``pretrained_cfg_overlay=dict(file=...)``: timm prefers
# the ``model_ema`` entry of such training checkpoints silently, while the official results are ``model``'s.
default_cfgs = generate_default_cfgs({
    "localvit_tiny.paper_in1k": _cfg(),
    "localvit_tiny_se4.paper_in1k": _cfg(),
    "localvit_tiny_mlp6.untrained": _cfg(),
    "localvit_small.paper_in1k": _cfg(),
    "deit_tiny_mlp6.untrained": _cfg(),
})


def getter_feature_cfg(kwargs: dict[str, Any], out_indices: int = 3) -> dict[str, Any]:
    """timm's ``feature_cfg`` for ``features_only`` through ``forward_intermediates`` (default: the last
    ``out_indices`` taps, 3 as timm's ViT/TNT). Takes ``out_indices`` out of ``kwargs``, where the model's
    constructor would reject it."""
    return dict(out_indices=kwargs.pop("out_indices", out_indices), feature_cls="getter")


def _create_localvit(variant: str, pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    return build_model_with_cfg(
        LocalVisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=getter_feature_cfg(kwargs),
        **kwargs,
    )


_TINY = dict(patch_size=16, embed_dim=192, depth=12, num_heads=4)


@register_model
def localvit_tiny(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """LocalViT-T (official ``localvit_tiny_mlp4_act3_r192``): γ=4, h-swish + SE-192, 4 heads."""
    args = dict(_TINY, mlp_ratio=4.0, act="hswish", attn="se", se_reduction=192)
    return _create_localvit("localvit_tiny", pretrained, **dict(args, **kwargs))


@register_model
def localvit_tiny_se4(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """LocalViT-T-SE4 (official ``localvit_tiny_mlp4_act3_r4``): SE hidden 192."""
    args = dict(_TINY, mlp_ratio=4.0, act="hswish", attn="se", se_reduction=4)
    return _create_localvit("localvit_tiny_se4", pretrained, **dict(args, **kwargs))


@register_model
def localvit_tiny_mlp6(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """LocalViT-T γ=6 with DW and ReLU6 (official ``localvit_tiny_mlp6_act1``)."""
    args = dict(_TINY, mlp_ratio=6.0, act="relu6", attn="none")
    return _create_localvit("localvit_tiny_mlp6", pretrained, **dict(args, **kwargs))


@register_model
def localvit_small(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """LocalViT-S (official ``localvit_small_mlp4_act3_r384``): dim 384, 8 heads, h-swish + SE-384."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=8, mlp_ratio=4.0, act="hswish", attn="se",
                se_reduction=384)
    return _create_localvit("localvit_small", pretrained, **dict(args, **kwargs))


@register_model
def deit_tiny_mlp6(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-T with γ=6 (official ``deit_tiny_patch16_224_ex6``), the baseline of the γ=6 rows."""
    args = dict(dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=6.0), **kwargs)
    return build_model_with_cfg(VisionTransformer, "deit_tiny_mlp6", pretrained,
                                pretrained_filter_fn=vit_checkpoint_filter_fn,
                                feature_cfg=getter_feature_cfg(args), **args)
