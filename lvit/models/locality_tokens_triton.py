"""The two ends of a fused locality block, where the token sequence meets the image, as Triton kernels.

A locality block's feed-forward runs on the patch tokens as an image while the class token bypasses it. In
PyTorch that is a split of the sequence, a cast of the patch tokens for the expand conv, the last batch norm,
the residual add and a cat that re-attaches the class token; backward, a cat for the split and an add that
joins the two gradients of the sequence. The patch tokens are a view strided by image, so the casts and adds
take PyTorch's slower non-vectorised kernels; on an H100 the cats, the strided adds and casts and the last
batch norm's kernels took about 0.4 ms of LocalViT-T's 3.4 ms per block (``benchmarks/RESULTS.md``). Here:

* :func:`split_tokens`: the patch tokens copied out as a channels-last image in the conv's dtype, one pass,
  beside ``x`` itself for the residual; its backward adds the image's gradient at the patch tokens of the
  residual's, one pass, so that the two gradients of ``x`` are joined without a scatter and an add.
* :func:`residual_batch_norm`: ``x`` with ``BN(y)`` added to its patch tokens, the statistics of ``y`` in one
  pass and the output in another; its backward passes the sequence's gradient on as it is and computes the
  batch norm's gradients from two passes over the patch tokens' gradient.

Sequences are ``(B, PREFIX + H*W, C)`` and contiguous; images ``(B, C, H, W)`` channels-last, indexed as the
``(B*H*W, C)`` rows the kernels of :mod:`lvit.models.locality_triton` use, whose helpers these share.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import triton
import triton.language as tl

from lvit.models.locality_triton import (
    MEAN,
    SCALE,
    SHIFT,
    STAT_ROWS,
    TILES,
    _bhwc,
    _bn_gradients,
    _bn_statistics,
    _load,
    _load_channels,
    _map_grid,
    _partial,
    _running_moments,
    _store,
    _store_channel_sum,
    _sum_grid,
    _tile,
    _update_running_statistics,
    _uses_batch_statistics,
)

__all__ = ["residual_batch_norm", "split_tokens"]


@triton.jit
def _token_of(p, HW, PREFIX):
    """Row of the sequence ``(B * (PREFIX + HW), C)`` that holds row ``p`` of the image ``(B * HW, C)``."""
    return (p // HW) * (HW + PREFIX) + PREFIX + p % HW


@triton.jit
def _patch_of(q, HW, PREFIX):
    """Row of the image that sequence row ``q`` holds, and whether it holds one (not a prefix token)."""
    t = q % (HW + PREFIX)
    return (q // (HW + PREFIX)) * HW + t - PREFIX, t >= PREFIX


@triton.jit
def _gather_patches_kernel(x_ptr, out_ptr, P, C, HW, PREFIX, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``out[p] = x[token of p]``, in ``out``'s dtype."""
    p, c, mask = _tile(tl.program_id(0), P, C, BLOCK_P, BLOCK_C)
    _store(out_ptr, p, c, mask, C, _load(x_ptr, _token_of(p, HW, PREFIX), c, mask, C))


@triton.jit
def _scatter_add_patches_kernel(s_ptr, g_ptr, out_ptr, T, C, HW, PREFIX, BLOCK_P: tl.constexpr,
                                BLOCK_C: tl.constexpr):
    """``out[q] = s[q] + g[patch of q]`` at the patch tokens, ``s[q]`` at the prefix tokens."""
    q, c, mask = _tile(tl.program_id(0), T, C, BLOCK_P, BLOCK_C)
    p, is_patch = _patch_of(q, HW, PREFIX)
    image = _load(g_ptr, p, c, mask & is_patch[:, None], C)
    _store(out_ptr, q, c, mask, C, _load(s_ptr, q, c, mask, C) + image)


@triton.jit
def _residual_norm_kernel(x_ptr, y_ptr, scale_ptr, shift_ptr, out_ptr, T, C, HW, PREFIX,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``out = x + scale * y[patch] + shift`` at the patch tokens, ``x`` at the prefix tokens."""
    q, c, mask = _tile(tl.program_id(0), T, C, BLOCK_P, BLOCK_C)
    p, is_patch = _patch_of(q, HW, PREFIX)
    patch = mask & is_patch[:, None]
    scale = _load_channels(scale_ptr, C, BLOCK_C)
    shift = _load_channels(shift_ptr, C, BLOCK_C)
    update = tl.where(patch, _load(y_ptr, p, c, patch, C) * scale + shift, 0.0)
    _store(out_ptr, q, c, mask, C, _load(x_ptr, q, c, mask, C) + update)


@triton.jit
def _norm_grad_sums_kernel(grad_ptr, y_ptr, mean_ptr, sum_ptr, dot_ptr, P, C, HW, PREFIX, BLOCKS,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """Per channel over the patch tokens: ``sum(g)`` and ``sum(g * (y - mean))``, ``g`` the sequence's
    gradient there: the two sums a batch norm's backward needs."""
    mean = _load_channels(mean_ptr, C, BLOCK_C)
    total = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    total_dot = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.range(BLOCKS, num_stages=STAGES):
        p, c, mask = _tile(tl.program_id(0) * BLOCKS + i, P, C, BLOCK_P, BLOCK_C)
        g = _load(grad_ptr, _token_of(p, HW, PREFIX), c, mask, C)
        total += g
        total_dot += g * (_load(y_ptr, p, c, mask, C) - mean)  # g is 0 where the loads are masked
    _store_channel_sum(sum_ptr, tl.program_id(0), total, C, BLOCK_C)
    _store_channel_sum(dot_ptr, tl.program_id(0), total_dot, C, BLOCK_C)


@triton.jit
def _norm_input_grad_kernel(grad_ptr, y_ptr, scale_ptr, coef_ptr, out_ptr, P, C, HW, PREFIX,
                            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``out = scale * g + gb * y + gc`` per channel (``coef_ptr``: rows gb, gc), ``g`` the sequence's
    gradient at the patch tokens: the batch norm's input gradient, in ``out``'s dtype."""
    p, c, mask = _tile(tl.program_id(0), P, C, BLOCK_P, BLOCK_C)
    out = (_load_channels(scale_ptr, C, BLOCK_C) * _load(grad_ptr, _token_of(p, HW, PREFIX), c, mask, C)
           + _load_channels(coef_ptr, C, BLOCK_C) * _load(y_ptr, p, c, mask, C)
           + _load_channels(coef_ptr + C, C, BLOCK_C))
    _store(out_ptr, p, c, mask, C, out)


# --- host side ---------------------------------------------------------------------------------------------


@torch.library.custom_op("lvit::gather_patches", mutates_args=())
def _gather_patches(x: torch.Tensor, prefix: int, grid: list[int], dtype: torch.dtype) -> torch.Tensor:
    """The patch tokens of ``x`` as a channels-last ``(B, C, H, W)`` image in ``dtype``."""
    B, _, C = x.shape
    H, W = grid
    out = torch.empty(B, H, W, C, dtype=dtype, device=x.device)
    P = B * H * W
    _gather_patches_kernel[_map_grid(P, C, TILES["map"])](x.contiguous(), out, P, C, H * W, prefix,
                                                          **TILES["map"].meta())
    return out.permute(0, 3, 1, 2)


@_gather_patches.register_fake
def _gather_patches_shape(x: torch.Tensor, prefix: int, grid: list[int], dtype: torch.dtype) -> torch.Tensor:
    return x.new_empty((x.shape[0], grid[0], grid[1], x.shape[2]), dtype=dtype).permute(0, 3, 1, 2)


@torch.library.custom_op("lvit::scatter_add_patches", mutates_args=())
def _scatter_add_patches(sequence_grad: torch.Tensor, image_grad: torch.Tensor, prefix: int) -> torch.Tensor:
    """The backward of :class:`_SplitTokens`: the ``(B, prefix + H*W, C)`` sequence's gradient with the
    image's added at the patch tokens, in the sequence's dtype."""
    g = _bhwc(image_grad)
    B, H, W, C = g.shape
    sequence_grad = sequence_grad.contiguous()
    out = torch.empty_like(sequence_grad)
    T = B * (prefix + H * W)
    _scatter_add_patches_kernel[_map_grid(T, C, TILES["map"])](sequence_grad, g, out, T, C, H * W, prefix,
                                                               **TILES["map"].meta())
    return out


@_scatter_add_patches.register_fake
def _scatter_add_patches_shape(sequence_grad: torch.Tensor, image_grad: torch.Tensor, prefix: int
                               ) -> torch.Tensor:
    return torch.empty_like(sequence_grad, memory_format=torch.contiguous_format)


class _SplitTokens(torch.autograd.Function):
    """``x`` -> (its patch tokens as an image, ``x`` itself): where a block's tokens go, the feed-forward and
    the residual, as one autograd node. Its backward joins the two gradients in one pass (the image's added
    at the patch tokens of the sequence's) where a gather's backward and autograd's sum of the two would
    write and read the sequence's gradient twice more."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, prefix: int, grid: list[int], dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.prefix = prefix
        return _gather_patches(x, prefix, grid, dtype), x.view_as(x)

    @staticmethod
    def backward(ctx: Any, image_grad: torch.Tensor, sequence_grad: torch.Tensor) -> tuple[Any, ...]:
        return _scatter_add_patches(sequence_grad, image_grad, ctx.prefix), None, None, None


@torch.library.custom_op("lvit::residual_batch_norm", mutates_args=())
def _residual_batch_norm(x: torch.Tensor, y: torch.Tensor, affine: torch.Tensor, running: torch.Tensor,
                         eps: float, batch: bool, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``x`` with ``BN(y)`` added at its patch tokens, the batch norm's ``(STAT_ROWS, C)`` statistic rows).
    ``affine``: rows (gamma, beta); ``running``: the running (mean, variance), read when ``batch`` is
    False."""
    image = _bhwc(y)
    B, H, W, C = image.shape
    stats = _partial(STAT_ROWS, C, image)
    _bn_statistics(image if batch else None, affine, running, eps, B * H * W, stats)
    x = x.contiguous()
    out = torch.empty_like(x)
    T = B * (prefix + H * W)
    scale, shift = stats[SCALE], stats[SHIFT]
    _residual_norm_kernel[_map_grid(T, C, TILES["map"])](x, image, scale, shift, out, T, C, H * W, prefix,
                                                         **TILES["map"].meta())
    return out, stats


@_residual_batch_norm.register_fake
def _residual_batch_norm_shapes(x: torch.Tensor, y: torch.Tensor, affine: torch.Tensor, running: torch.Tensor,
                                eps: float, batch: bool, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            affine.new_empty((STAT_ROWS, affine.shape[1])))


@torch.library.custom_op("lvit::residual_batch_norm_backward", mutates_args=())
def _residual_batch_norm_backward(grad_out: torch.Tensor, y: torch.Tensor, stats: torch.Tensor, batch: bool,
                                  prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (``y``, ``affine``) from the output's; ``stats``: the forward's statistic rows."""
    image = _bhwc(y)
    B, H, W, C = image.shape
    P = B * H * W
    grad_out = grad_out.contiguous()
    grid, blocks = _sum_grid(P, C, TILES["sums"])
    total, dot = _partial(grid[0], C, image), _partial(grid[0], C, image)
    _norm_grad_sums_kernel[grid](grad_out, image, stats[MEAN], total, dot, P, C, H * W, prefix, blocks,
                                 **TILES["sums"].meta())
    grad_affine = _partial(2, C, image)
    coef = _bn_gradients(total, dot, stats, P, batch, grad_affine)
    grad_y = torch.empty_like(image)
    _norm_input_grad_kernel[_map_grid(P, C, TILES["map"])](grad_out, image, stats[SCALE], coef, grad_y, P, C,
                                                           H * W, prefix, **TILES["map"].meta())
    return grad_y.permute(0, 3, 1, 2), grad_affine


@_residual_batch_norm_backward.register_fake
def _residual_batch_norm_backward_shapes(grad_out: torch.Tensor, y: torch.Tensor, stats: torch.Tensor,
                                         batch: bool, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(y, memory_format=torch.channels_last), stats.new_empty((2, stats.shape[1]))


def _residual_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, y, _, _, _, batch, prefix = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else autograd fills a zero gradient for the statistic rows
    ctx.save_for_backward(y, output[1])
    ctx.batch, ctx.prefix = batch, prefix


def _residual_gradients(ctx: Any, grad_out: torch.Tensor, _stats_grad: torch.Tensor) -> tuple[Any, ...]:
    y, stats = ctx.saved_tensors
    grad_y, grad_affine = _residual_batch_norm_backward(grad_out, y, stats, ctx.batch, ctx.prefix)
    # the residual: the sequence's gradient reaches x unchanged, with no copy
    return grad_out, grad_y, grad_affine, None, None, None, None


_residual_batch_norm.register_autograd(_residual_gradients, setup_context=_residual_setup)


def split_tokens(x: torch.Tensor, prefix: int, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(The patch tokens of ``x`` ``(B, prefix + H*W, C)`` as a channels-last ``(B, C, H, W)`` image, ``x``
    for the residual), the image in the dtype the expand conv computes in (autocast's where it is on), as the
    eager path's cast gives it."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return _SplitTokens.apply(x, prefix, list(grid), dtype)


def residual_batch_norm(x: torch.Tensor, y: torch.Tensor, bn: nn.BatchNorm2d, prefix: int) -> torch.Tensor:
    """``x`` with ``bn(y)`` added to its patch tokens (``y``: ``(B, C, H, W)``), with ``bn``'s parameters and
    batch-norm state (its running statistics updated in training, as ``nn.BatchNorm2d`` does)."""
    affine = torch.stack([bn.weight, bn.bias]).float()
    out, stats = _residual_batch_norm(x, y, affine, _running_moments([bn], y.device), bn.eps,
                                      _uses_batch_statistics(bn), prefix)
    _update_running_statistics([bn], stats[None])
    return out
