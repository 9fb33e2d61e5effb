"""TNT-T (Han et al., "Transformer in Transformer", arXiv 2103.00112) and LocalViT-TNT, on timm's TNT.

The TNT that LocalViT's ``localvit_tnt.py`` builds on is timm's original layout, ``legacy=True`` in
timm 1.x (conv stem then unfold, biased pixel->patch projection): TNT-T built that way has exactly the
official 6,069,784 parameters. LocalViT-TNT replaces the outer (patch-level) ``norm_mlp`` + MLP of every
block by the locality feed-forward (h-swish + SE, reduction = dim -> SE hidden 4); the inner pixel MLP is
unchanged and the class token bypasses the feed-forward, as in the DeiT-based LocalViT.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.tnt import TNT, Block, checkpoint_filter_fn
from timm.models.tnt import _cfg as tnt_cfg

from lvit.models.locality import LocalityFeedForward, apply_to_patch_tokens
from lvit.models.localvit import _cfg as localvit_cfg
from lvit.models.localvit import getter_feature_cfg

__all__ = ["LocalityTNTBlock", "LocalViTTNT"]


class LocalityTNTBlock(Block):
    """timm's TNT block whose outer feed-forward is the locality feed-forward ``conv``."""

    def __init__(self, grid_size: tuple[int, int], mlp_ratio: float = 4.0, **block_kwargs: Any) -> None:
        super().__init__(mlp_ratio=mlp_ratio, **block_kwargs)
        dim = block_kwargs["dim_out"]
        # The official block has no outer norm_mlp/MLP; the residual lives inside the feed-forward.
        del self.norm_mlp, self.mlp
        self.conv = LocalityFeedForward(dim, mlp_ratio, act="hswish", attn="se", se_reduction=dim)
        self.grid_size = grid_size

    def forward(
        self, pixel_embed: torch.Tensor, patch_embed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_embed = pixel_embed + self.drop_path(self.attn_in(self.norm_in(pixel_embed)))
        pixel_embed = pixel_embed + self.drop_path(self.mlp_in(self.norm_mlp_in(pixel_embed)))
        batch, tokens, _ = patch_embed.shape
        pixels = self.proj(self.norm1_proj(pixel_embed).reshape(batch, tokens - 1, -1))
        patch_embed = torch.cat([patch_embed[:, :1], patch_embed[:, 1:] + pixels], dim=1)
        patch_embed = patch_embed + self.drop_path(self.attn_out(self.norm_out(patch_embed)))
        return pixel_embed, apply_to_patch_tokens(self.conv, patch_embed, 1, self.grid_size)


class LocalViTTNT(TNT):
    """TNT with :class:`LocalityTNTBlock` blocks (legacy layout, as the official LocalViT-TNT)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**dict(dict(legacy=True), **kwargs))
        self.blocks = torch.nn.ModuleList([self._locality_block(block, kwargs) for block in self.blocks])
        self.apply(self._init_weights)  # the new SE linears get TNT's init, as in the official model

    def _locality_block(self, block: Block, kwargs: dict[str, Any]) -> LocalityTNTBlock:
        """Rebuild ``block`` with the locality feed-forward, keeping its dimensions and drop-path rate."""
        drop_path = getattr(block.drop_path, "drop_prob", 0.0)
        return LocalityTNTBlock(
            grid_size=self.pixel_embed.grid_size, mlp_ratio=kwargs.get("mlp_ratio", 4.0),
            dim=block.norm_in.normalized_shape[0], dim_out=self.embed_dim,
            num_pixel=block.proj.in_features // block.norm_in.normalized_shape[0],
            num_heads_in=block.attn_in.num_heads, num_heads_out=block.attn_out.num_heads,
            qkv_bias=block.attn_out.v.bias is not None, proj_drop=kwargs.get("proj_drop_rate", 0.0),
            attn_drop=kwargs.get("attn_drop_rate", 0.0), drop_path=drop_path, legacy=block.legacy,
        )


# Official LocalViT release v1.0.0: localvit_tnt.pth (load with lvit.load_pretrained).
default_cfgs = generate_default_cfgs({
    "tnt_tiny_patch16_224.untrained": tnt_cfg(),
    # Not TNT's preprocessing (mean = std = 0.5, crop 0.9): LocalViT's main.py trained and evaluated every
    # backbone with DeiT's transforms, Resize 256 bicubic -> CenterCrop 224 -> ImageNet mean/std (localvit.md
    # §3, "Eval"), as lvit's own evaluation does (lvit.data.transforms.deit_eval_transform).
    "localvit_tnt_tiny.paper_in1k": localvit_cfg(
        first_conv="pixel_embed.proj", paper_name="LocalViT: Bringing Locality to Vision Transformers"),
})

# TNT-T: dim 192, pixel dim 12, 3 outer and 3 inner heads, no qkv bias, legacy layout.
_TNT_TINY = dict(patch_size=16, embed_dim=192, inner_dim=12, depth=12, num_heads_outer=3, num_heads_inner=3,
                 qkv_bias=False, legacy=True)


def _create_tnt(cls: type[TNT], variant: str, pretrained: bool = False, **kwargs: Any) -> TNT:
    return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=getter_feature_cfg(kwargs), **kwargs)


@register_model
def tnt_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> TNT:
    """TNT-T, the baseline of LocalViT-TNT (timm has only TNT-S/B)."""
    return _create_tnt(TNT, "tnt_tiny_patch16_224", pretrained, **dict(_TNT_TINY, **kwargs))


@register_model
def localvit_tnt_tiny(pretrained: bool = False, **kwargs: Any) -> LocalViTTNT:
    """LocalViT-TNT (official ``localvit_tnt_t_patch16_224``)."""
    return _create_tnt(LocalViTTNT, "localvit_tnt_tiny", pretrained, **dict(_TNT_TINY, **kwargs))
