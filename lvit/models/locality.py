"""The locality feed-forward of LocalViT and the pieces it is built from.

Faithful to the official code (ofsoundof/LocalViT, ``models/localvit.py``): one ``nn.Sequential`` named
``conv`` whose indices match the released checkpoints (``conv.conv.0.weight`` ... when the module is a
block's ``conv`` attribute)::

    1x1 conv -> BN -> act -> [DW 3x3 conv -> BN -> act] -> [SE | ECA] -> 1x1 conv -> BN

Every conv is bias-free, the residual is *inside* the module (``x + conv(x)``), and the same activation
follows the expand conv and the depth-wise conv. Tokens enter and leave as sequences; :func:`tokens_to_image`
and :func:`image_to_tokens` do the Seq2Img/Img2Seq rearrangement while prefix tokens (the class token)
bypass the convolution, as in the paper.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

Activation = Literal["relu6", "hswish"]
# "none" spells "no channel attention" where None cannot: timm.create_model drops None-valued kwargs
# (lvit.create_model passes them through).
ChannelAttention = Literal["none", "se", "eca"] | None
ACTIVATIONS: tuple[str, ...] = ("relu6", "hswish")
CHANNEL_ATTENTIONS: tuple[str | None, ...] = ("none", None, "se", "eca")


class HSigmoid(nn.Module):
    """Hard sigmoid ``ReLU6(x + 3) / 6`` (MobileNetV3), as one fused kernel (``F.hardsigmoid``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x)


class HSwish(nn.Module):
    """Hard swish ``x * ReLU6(x + 3) / 6`` (MobileNetV3), as one fused kernel: written out it is four
    elementwise passes over the widest tensor of the block, which cost LocalViT-T 0.12 of DeiT-T's training
    rate on an H200 (``benchmarks/RESULTS.md``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(x)


class SELayer(nn.Module):
    """Squeeze-and-excitation with hidden size ``channels // reduction`` and a hard-sigmoid gate.

    ``reduction`` is the paper's "SE-r": for 768 channels SE-192 has 4 hidden units, SE-4 has 192.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        if channels // reduction < 1:
            raise ValueError(f"SE reduction {reduction} leaves no hidden unit for {channels} channels")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            HSigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(self.avg_pool(x).flatten(1))
        return x * rearrange(gate, "b c -> b c 1 1")


class ECALayer(nn.Module):
    """Efficient channel attention: a 1-D conv over the pooled channels; kernel size grows with log2(C)."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        t = int(abs((math.log(channels, 2) + b) / gamma))
        kernel_size = t if t % 2 else t + 1
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = rearrange(self.avg_pool(x), "b c 1 1 -> b 1 c")
        gate = self.sigmoid(self.conv(pooled))
        return x * rearrange(gate, "b 1 c -> b c 1 1")


def make_activation(act: str) -> nn.Module:
    if act == "relu6":
        return nn.ReLU6(inplace=True)
    if act == "hswish":
        return HSwish()
    raise ValueError(f"unknown activation {act!r}; valid: {', '.join(ACTIVATIONS)}")


def make_channel_attention(attn: str | None, channels: int, se_reduction: int) -> list[nn.Module]:
    if attn is None or attn == "none":
        return []
    if attn == "se":
        return [SELayer(channels, se_reduction)]
    if attn == "eca":
        return [ECALayer(channels)]
    raise ValueError(f"unknown channel attention {attn!r}; valid: {', '.join(map(str, CHANNEL_ATTENTIONS))}")


class LocalityFeedForward(nn.Module):
    """The LocalViT feed-forward on an image ``(B, C, H, W)``; returns ``x + conv(x)``.

    Args:
        in_dim: channels in and out.
        mlp_ratio: the expansion ratio γ; hidden channels ``int(in_dim * mlp_ratio)``.
        dw: with the 3x3 depth-wise conv (False gives the 1x1-conv feed-forward, ``wo_dp_conv``).
        act: ``"relu6"`` or ``"hswish"``, used after the expand conv and after the depth-wise conv.
        attn: ``"none"`` (or None), ``"se"`` or ``"eca"`` channel attention after the depth-wise block.
        se_reduction: SE reduction ratio r (hidden = hidden channels // r).
        stride: stride of the depth-wise conv.

    ``fused`` (default False; :func:`set_fused_locality` turns it on) runs ``BN -> act -> DW -> BN -> act``
    and SE (not ECA) in the Triton kernels of :mod:`lvit.models.locality_triton` when the input is on a GPU:
    same parameters, buffers and arithmetic, fewer passes over memory. On a block's tokens
    (:meth:`forward_tokens`, which :class:`~lvit.models.localvit.LocalityBlock` calls) the gather of the patch
    tokens, the last batch norm, the residual and the class token's bypass are fused too
    (:mod:`lvit.models.locality_tokens_triton`). The kernels are custom ops, so ``torch.compile`` traces the
    fused feed-forward without a graph break and compiles the rest around them.
    """

    def __init__(
        self,
        in_dim: int,
        mlp_ratio: float = 4.0,
        dw: bool = True,
        act: Activation = "hswish",
        attn: ChannelAttention = "se",
        se_reduction: int = 4,
        stride: int = 1,
    ) -> None:
        super().__init__()
        hidden = int(in_dim * mlp_ratio)
        self.act = act
        self.fusable = dw and stride == 1  # the kernels implement the 3x3 stride-1 depth-wise conv
        self.fused = False
        layers: list[nn.Module] = [
            nn.Conv2d(in_dim, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            make_activation(act),
        ]
        if dw:
            layers += [
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden),
                make_activation(act),
            ]
        layers += make_channel_attention(attn, hidden, se_reduction)
        layers += [nn.Conv2d(hidden, in_dim, 1, 1, 0, bias=False), nn.BatchNorm2d(in_dim)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runs_fused(x):
            return x + self.conv[-1](self._fused_branch(x))
        return x + self.conv(x)

    def runs_fused(self, x: torch.Tensor) -> bool:
        """Whether a forward on ``x`` takes the fused kernels: switched on, and where Triton runs."""
        return self.fused and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")

    def forward_tokens(self, x: torch.Tensor, num_prefix_tokens: int,
                       grid_size: tuple[int, int] | None) -> torch.Tensor:
        """The fused path on a block's tokens ``(B, P + H*W, C)``: what ``apply_to_patch_tokens(self, ...)``
        computes, with the patch tokens gathered into an image, and the last batch norm, the residual and the
        prefix tokens written back, in the kernels of :mod:`lvit.models.locality_tokens_triton` instead of a
        split, a cast, a batch norm, an add and a cat."""
        from lvit.models.locality_tokens_triton import residual_batch_norm, split_tokens

        grid = patch_grid(x.shape[1] - num_prefix_tokens, grid_size)
        image, x = split_tokens(x, num_prefix_tokens, grid)
        return residual_batch_norm(x, self._fused_branch(image), self.conv[-1], num_prefix_tokens)

    def _fused_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``self.conv`` up to its last batch norm, with the middle in the fused kernels."""
        from lvit.models.locality_triton import locality_middle  # imports triton: only where it runs

        # indexing, not starred unpacking: dynamo in torch 2.11 makes ``*rest`` of a module a tuple
        expand, bn1, dw, bn2 = self.conv[0], self.conv[1], self.conv[3], self.conv[4]
        se = self.conv[6] if isinstance(self.conv[6], SELayer) else None  # ECA stays an eager module
        out = locality_middle(expand(x), bn1, dw, bn2, self.act, se)
        for i in range(6 if se is None else 7, len(self.conv) - 1):  # ECA if any, the projection
            out = self.conv[i](out)
        return out


# The modules that hold the fused path's Triton kernels (every ``*_kernel`` in them): benchmarks count and
# compile them by name (benchmarks/step_traffic.py, benchmarks/kernel_issue.py).
FUSED_KERNEL_MODULES = ("lvit.models.locality_triton", "lvit.models.locality_tokens_triton")


def fused_kernels() -> dict[str, tuple[Any, Any]]:
    """Every Triton kernel of the fused path by name: (its module, the kernel). Imports triton."""
    import importlib

    modules = [importlib.import_module(name) for name in FUSED_KERNEL_MODULES]
    return {name: (module, kernel) for module in modules for name, kernel in vars(module).items()
            if name.endswith("_kernel")}


def set_fused_locality(model: nn.Module, enabled: bool = True) -> int:
    """Switch every :class:`LocalityFeedForward` in ``model`` with a 3x3 stride-1 depth-wise conv to the fused
    Triton kernels (or back); returns how many were switched. Inert on the CPU (outside Triton's
    interpreter)."""
    return _set_fused(_fusable_feed_forwards(model), enabled)


def _fusable_feed_forwards(model: nn.Module) -> list[LocalityFeedForward]:
    return [m for m in model.modules() if isinstance(m, LocalityFeedForward) and m.fusable]


def _set_fused(modules: list[LocalityFeedForward], enabled: bool) -> int:
    if enabled:
        import triton  # noqa: F401  (fail here, clearly, where the kernels cannot run)
    for module in modules:
        module.fused = enabled
    return len(modules)


@contextlib.contextmanager
def fused_locality(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s fusable feed-forwards take the fused kernels (yields how many); each is
    set back as it was on leaving, also on an error.

    Made for CUDA-graph capture (:func:`lvit.engine.graphed.capture_step`): a graph replays the kernels it
    captured whatever the flags say later, so the replayed step runs fused while the eager code around it
    (evaluation, say, where the kernels' host-side work per block would cost more than they save) does not.
    """
    modules = _fusable_feed_forwards(model)
    before = [m.fused for m in modules]
    try:
        yield _set_fused(modules, True)
    finally:
        for module, fused in zip(modules, before, strict=True):
            module.fused = fused


def tokens_to_image(
    x: torch.Tensor, num_prefix_tokens: int, grid_size: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(B, P + H*W, C)`` into the prefix tokens ``(B, P, C)`` and the image ``(B, C, H, W)``.

    Patch tokens are row-major, as timm's ``PatchEmbed`` flattens them. Without ``grid_size`` the grid is
    taken to be square, as the official code does (``p = sqrt(N)``).
    """
    # one split, not two slices: its backward is one cat, where each slice's backward writes a zero-filled
    # copy of the whole sequence and autograd then adds the two
    prefix, patches = x.split([num_prefix_tokens, x.shape[1] - num_prefix_tokens], dim=1)
    h, w = patch_grid(patches.shape[1], grid_size)
    return prefix, rearrange(patches, "b (h w) c -> b c h w", h=h, w=w)


def patch_grid(num_patches: int, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    """``grid_size``, or the square grid of ``num_patches`` when it is None (the official code's
    ``p = sqrt(N)``)."""
    if grid_size is not None:
        return grid_size
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a square grid; pass grid_size")
    return side, side


def image_to_tokens(prefix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`tokens_to_image`: ``(B, P, C)`` and ``(B, C, H, W)`` -> ``(B, P + H*W, C)``."""
    return torch.cat([prefix, rearrange(image, "b c h w -> b (h w) c")], dim=1)


def apply_to_patch_tokens(
    module: nn.Module, x: torch.Tensor, num_prefix_tokens: int, grid_size: tuple[int, int] | None
) -> torch.Tensor:
    """Run an image module over the patch tokens of ``x``; the prefix tokens (class token) bypass it."""
    prefix, image = tokens_to_image(x, num_prefix_tokens, grid_size)
    return image_to_tokens(prefix, module(image))
