"""PVT v1 (Wang et al., "Pyramid Vision Transformer", arXiv 2102.12122) and LocalViT-PVT.

timm has only PVT v2, so v1 is written here following the official code (whai362/PVT, ``pvt.py``) that
LocalViT's ``localvit_pvt.py`` builds on; attribute names match the official state_dict
(``patch_embed{i}``, ``pos_embed{i}``, ``block{i}``, ``attn.q/kv/sr/norm``). Four stages of patch
embedding (stride 4, 2, 2, 2) and pre-norm blocks whose attention shrinks keys/values by a strided conv
(``sr_ratio``). Only the last stage has a class token. LocalViT-PVT replaces ``norm2`` + MLP in every
block of every stage by the locality feed-forward (h-swish + SE with reduction = dim, i.e. SE hidden =
``mlp_ratio``); in stages 1-3 the whole grid goes through it, in stage 4 the class token bypasses it.
Position embeddings are resampled when the input grid differs from the built one.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    Mlp,
    calculate_drop_path_rates,
    resample_abs_pos_embed,
    to_2tuple,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint

from lvit.models.locality import LocalityFeedForward, apply_to_patch_tokens
from lvit.models.localvit import getter_feature_cfg, init_weights_official

__all__ = ["PyramidVisionTransformer", "checkpoint_filter_fn"]


class PatchEmbed(nn.Module):
    """Strided conv + LayerNorm; returns tokens ``(B, H*W, C)`` and the grid ``(H, W)``."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return self.norm(rearrange(x, "b c h w -> b (h w) c")), grid


class Attention(nn.Module):
    """Spatial-reduction attention: keys and values come from the grid shrunk by ``sr_ratio``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, sr_ratio: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)
        context = x
        if self.sr_ratio > 1:  # stages with sr > 1 have no class token: x is exactly the grid
            image = rearrange(x, "b (h w) c -> b c h w", h=grid[0], w=grid[1])
            context = self.norm(rearrange(self.sr(image), "b c h w -> b (h w) c"))
        k, v = rearrange(self.kv(context), "b n (two h d) -> two b h n d", two=2, h=self.num_heads)
        drop = self.attn_drop if self.training else 0.0
        out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class Block(nn.Module):
    """Pre-norm PVT block; with ``locality`` its ``norm2`` + MLP become the locality feed-forward ``conv``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, sr_ratio: int,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, locality: bool = False,
                 num_prefix_tokens: int = 0, norm_layer: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.num_prefix_tokens = num_prefix_tokens
        if locality:  # official LocalViT-PVT: SE reduction = dim, so SE hidden = mlp_ratio
            self.conv = LocalityFeedForward(dim, mlp_ratio, act="hswish", attn="se", se_reduction=dim)
        else:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        if hasattr(self, "conv"):
            return apply_to_patch_tokens(self.conv, x, self.num_prefix_tokens, grid)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PyramidVisionTransformer(nn.Module):
    """PVT v1; ``locality=True`` gives LocalViT-PVT. Stage i (1-based) modules are ``*{i}`` as officially."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        locality: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_stages = len(depths)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        img_size = to_2tuple(img_size)
        stride, in_dim = 1, in_chans
        self.feature_info: list[dict[str, Any]] = []  # each stage's output map, for timm's features_only
        for i, (dim, depth) in enumerate(zip(embed_dims, depths, strict=True), start=1):
            stage_patch = patch_size if i == 1 else 2
            embed = PatchEmbed((img_size[0] // stride, img_size[1] // stride), stage_patch, in_dim, dim)
            stride, in_dim = stride * stage_patch, dim
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"block{i}"))
            last = i == self.num_stages
            setattr(self, f"patch_embed{i}", embed)
            setattr(self, f"pos_embed{i}", nn.Parameter(torch.zeros(1, embed.num_patches + int(last), dim)))
            setattr(self, f"pos_drop{i}", nn.Dropout(drop_rate))
            first = sum(depths[: i - 1])
            setattr(self, f"block{i}", nn.ModuleList([
                Block(dim, num_heads[i - 1], mlp_ratios[i - 1], qkv_bias, sr_ratios[i - 1], drop_rate,
                      attn_drop_rate, dpr[first + j], locality, int(last), norm_layer)
                for j in range(depth)]))
        self.norm = norm_layer(embed_dims[-1])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        for i in range(1, self.num_stages + 1):
            trunc_normal_(getattr(self, f"pos_embed{i}"), std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights_official)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", *(f"pos_embed{i}" for i in range(1, self.num_stages + 1))}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block of every stage in the backward pass instead of storing its activations
        (timm's memory saving); every forward (classification, ``forward_intermediates``) honours it. As with
        any recomputation in train mode, LocalViT-PVT's batch norms update their running statistics twice
        per step (forward and recompute), so their buffers differ from a run without it."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _add_pos_embed(self, stage: int, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pos_embed = getattr(self, f"pos_embed{stage}")
        built_grid = getattr(self, f"patch_embed{stage}").grid_size
        if grid != built_grid:
            prefix = int(stage == self.num_stages)
            pos_embed = resample_abs_pos_embed(pos_embed, grid, built_grid, num_prefix_tokens=prefix)
        return getattr(self, f"pos_drop{stage}")(x + pos_embed)

    def _run_stage(self, stage: int, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stage ``stage`` (1-based): a feature map ``(B, C, H, W)`` out of stages 1-3, the last stage's
        tokens ``(B, 1 + H*W, C)`` (class token first) out of the last; and the stage's grid."""
        x, grid = getattr(self, f"patch_embed{stage}")(x)
        if stage == self.num_stages:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self._add_pos_embed(stage, x, grid)
        for block in getattr(self, f"block{stage}"):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, grid)
            else:
                x = block(x, grid)
        if stage < self.num_stages:
            x = rearrange(x, "b (h w) c -> b c h w", h=grid[0], w=grid[1])
        return x, grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in range(1, self.num_stages + 1):
            x, _ = self._run_stage(stage, x)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API (``features_only``): the stages' outputs as maps ``(B, C, H, W)``, strides
        4-32. ``indices`` are 0-based stages (an int n: the last n); ``norm`` applies the final norm to the
        last stage's map, whose class token is dropped."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r}: PVT's intermediates are NCHW maps only")
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        intermediates = []
        last_stage = max_index + 1 if stop_early else self.num_stages
        for stage in range(1, last_stage + 1):
            x, grid = self._run_stage(stage, x)
            if stage - 1 not in take_indices:
                continue
            if stage < self.num_stages:
                intermediates.append(x)
            else:
                tokens = self.norm(x) if norm else x
                intermediates.append(rearrange(tokens[:, 1:], "b (h w) c -> b c h w", h=grid[0], w=grid[1]))
        if intermediates_only:
            return intermediates
        # An early stop leaves an earlier stage's map, which the final norm (of the last tokens) does not fit.
        return (self.norm(x) if last_stage == self.num_stages else x), intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x[:, 0] if pre_logits else self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official PVT / LocalViT-PVT files -> lvit: unwrap ``{'model': ...}`` and resample each stage's
    ``pos_embed{i}`` to the model's grid (as the forward resamples them for other inputs); key names are
    already ours."""
    state_dict = dict(state_dict.get("model", state_dict))
    for stage in range(1, model.num_stages + 1):
        key = f"pos_embed{stage}"
        if key in state_dict and state_dict[key].shape != getattr(model, key).shape:
            state_dict[key] = resample_abs_pos_embed(
                state_dict[key], new_size=getattr(model, f"patch_embed{stage}").grid_size,
                num_prefix_tokens=int(stage == model.num_stages))  # only the last stage has a class token
    return state_dict


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
        "interpolation": "bicubic", "fixed_input_size": False, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed1.proj", "classifier": "head", **kwargs,
    }


# Official LocalViT release v1.0.0: localvit_pvt.pth (load with lvit.load_pretrained).
default_cfgs = generate_default_cfgs({
    "pvt_tiny.untrained": _cfg(origin_url="https://github.com/whai362/PVT", paper_ids="arXiv:2102.12122"),
    "localvit_pvt_tiny.paper_in1k": _cfg(origin_url="https://github.com/ofsoundof/LocalViT",
                                         paper_ids="arXiv:2104.05707"),
})


def _create_pvt(variant: str, pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    return build_model_with_cfg(PyramidVisionTransformer, variant, pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=getter_feature_cfg(kwargs, out_indices=4), **kwargs)


@register_model
def pvt_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """PVT-Tiny (v1): dims 64/128/320/512, depths 2/2/2/2."""
    return _create_pvt("pvt_tiny", pretrained, **kwargs)


@register_model
def localvit_pvt_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """LocalViT-PVT: PVT-Tiny with the locality feed-forward in every block."""
    return _create_pvt("localvit_pvt_tiny", pretrained, **dict(dict(locality=True), **kwargs))
