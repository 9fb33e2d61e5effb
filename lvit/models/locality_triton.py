"""The middle of the locality feed-forward, ``SE(act(BN(DW3x3(act(BN(h))))))``, as a few Triton kernels
around cuDNN's depth-wise conv.

Why: at DeiT-T width the training step is bound by the bytes it moves, and this middle stretch runs a dozen
eager kernels over the widest tensor of the block (4x the embedding width), forward and backward:
``benchmarks/step_traffic.py`` counts it as most of the 2x bytes LocalViT-T moves per image compared with
DeiT-T. Here each batch norm is folded into a per-channel scale and shift applied on the fly, batch-norm
statistics are gathered in one pass, SE's gate multiplies inside the activation pass, and the backward
recomputes what it needs from the three tensors it keeps (the input ``h``, the depth-wise conv's input and
its output) instead of storing six. The conv itself and its two gradients are cuDNN's: Triton stencils of
our own, fused with the statistics and activations around them, measured slower on an H100 than cuDNN's
kernels plus the passes they saved (``benchmarks/RESULTS.md``). Without a CUDA graph the kernels' host-side
work outweighs what they save, so they stay opt-in (``set_fused_locality``).

Forward: a statistics pass over ``h``; the first activation pass, which stores the conv's input; the conv;
a statistics pass over its output; with SE, a pooling pass; the second activation pass. Backward: a sums
pass (per image with SE: the gate's gradient and the second batch norm's sums together); the conv output's
gradient, stored once in the storage dtype (as eager autograd stores it); the conv's input and weight
gradients; a sums pass for the first batch norm; its input gradient. SE's excitation MLP is a few ``(B, C)``
matmuls in PyTorch. Forward and backward are custom ops (``lvit::locality_middle``,
``lvit::locality_middle_backward``), so ``torch.compile`` keeps them in its graph instead of breaking it.

Same arithmetic as the eager modules: the kernels compute in fp32 whatever the storage dtype, the conv runs as
the eager module runs it (in the storage dtype, bf16 weights under autocast), with the same batch-norm
semantics: batch statistics in training (biased for the normalisation, unbiased for ``running_var``, momentum
update, ``num_batches_tracked``), running statistics in eval. Tensors are channels-last ``(B, H, W, C)`` views
of the ``(B, C, H, W)`` modules' tensors. Variance is ``E[x^2] - E[x]^2`` in fp32, which loses digits only
when a channel's mean dwarfs its spread: where the mean is r spreads, the variance's relative error is about
r^2 x 6e-8 (r = 100: 6e-4). The expand conv reads the unnormalised residual stream (as in the official code),
so r depends on the trained model; PyTorch's eager CUDA batch norm uses Welford's update.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from lvit.models.locality import SELayer

ACT_CODES = {"relu6": 0, "hswish": 1}


class Tiles(NamedTuple):
    """How a kernel's launch cuts the ``(positions, channels)`` plane: a tile of ``positions`` (b, y, x) by
    ``channels`` (contiguous in channels-last memory) per step, run by ``warps`` warps. ``stages``, for the
    kernels that loop over position tiles: how many tiles' loads are in flight at once (Triton's software
    pipelining, through shared memory); None for the kernels that take one tile."""

    positions: int
    channels: int
    warps: int
    stages: int | None = None

    def meta(self) -> dict[str, int]:
        meta = dict(BLOCK_P=self.positions, BLOCK_C=self.channels, num_warps=self.warps)
        return meta if self.stages is None else meta | dict(STAGES=self.stages)


# Tiles per kind of launch; ``benchmarks/locality_kernels.py --tiles`` times alternatives on a GPU and
# ``benchmarks/kernel_issue.py --tiles`` counts their instructions on a CPU (the test suite checks every
# tile set for spills). The elementwise kernels take larger tiles: fewer, fuller programs. The looping
# kernels pipeline their loads: unpipelined, each warp waited for one 16-byte load per thread before the
# next, and on an H100 these kernels ran at 1.6-2.0x their memory floor, the fewer their resident warps the
# slower, where the one-tile kernels, whose loads are all issued at once, ran at 1.1-1.5x
# (``benchmarks/RESULTS.md``).
TILES = {
    "sums": Tiles(16, 64, 4, stages=3),  # the per-channel sums over all positions
    "per_image": Tiles(16, 64, 4, stages=3),  # SE's per-image pooling and sums
    "map": Tiles(64, 64, 4),  # the elementwise kernels
}


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 0:
        out = tl.minimum(tl.maximum(z, 0.0), 6.0)
    else:
        out = z * tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0
    return out


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    """d act / dz with PyTorch's conventions at the kinks (hardtanh_backward, hardswish_backward)."""
    if ACT == 0:
        grad = tl.where((z > 0.0) & (z < 6.0), 1.0, 0.0)
    else:
        grad = tl.where(z <= -3.0, 0.0, tl.where(z < 3.0, z / 3.0 + 0.5, 1.0))
    return grad


@triton.jit
def _tile(block, P, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Positions of position block ``block`` and channels of channel block ``program_id(1)``, with the mask of
    the (position, channel) pairs that exist."""
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return p, c, (p < P)[:, None] & (c < C)[None, :]


@triton.jit
def _load(ptr, p, c, mask, C):
    return tl.load(ptr + p[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store(ptr, p, c, mask, C, values):
    """Store ``values`` (fp32) at positions ``p``, channels ``c``, in ``ptr``'s dtype."""
    tl.store(ptr + p[:, None] * C + c[None, :], values.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_channels(ptr, C, BLOCK_C: tl.constexpr):
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return tl.load(ptr + c, mask=c < C, other=0.0)[None, :]


@triton.jit
def _store_channel_sum(ptr, row, values, C, BLOCK_C: tl.constexpr):
    """Row ``row`` of a ``(programs, C)`` buffer of per-program partial sums (summed on the host)."""
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(ptr + row * C + c, tl.sum(values, 0), mask=c < C)


@triton.jit
def _channel_sums_kernel(x_ptr, sum_ptr, sq_ptr, P, C, BLOCKS,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """Sum and sum of squares per channel over this program's ``BLOCKS`` position blocks."""
    total = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    total_sq = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.range(BLOCKS, num_stages=STAGES):
        p, c, mask = _tile(tl.program_id(0) * BLOCKS + i, P, C, BLOCK_P, BLOCK_C)
        x = _load(x_ptr, p, c, mask, C)
        total += x
        total_sq += x * x
    _store_channel_sum(sum_ptr, tl.program_id(0), total, C, BLOCK_C)
    _store_channel_sum(sq_ptr, tl.program_id(0), total_sq, C, BLOCK_C)


@triton.jit
def _scale_shift_act_kernel(x_ptr, scale_ptr, shift_ptr, gate_ptr, out_ptr, P, C, HW, HAS_SE: tl.constexpr,
                            ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``out = act(scale * x + shift)``, times ``gate[b, c]`` (``(B, C)``) with SE."""
    p, c, mask = _tile(tl.program_id(0), P, C, BLOCK_P, BLOCK_C)
    scale = _load_channels(scale_ptr, C, BLOCK_C)
    out = _act(_load(x_ptr, p, c, mask, C) * scale + _load_channels(shift_ptr, C, BLOCK_C), ACT)
    if HAS_SE:
        out = out * tl.load(gate_ptr + (p // HW)[:, None] * C + c[None, :], mask=mask, other=0.0)
    _store(out_ptr, p, c, mask, C, out)


@triton.jit
def _image_pool_kernel(x_ptr, scale_ptr, shift_ptr, out_ptr, HW, C,
                       ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """SE's pooling: ``out[b, c] = sum of act(scale * x + shift)`` over image b. One program per image and
    channel block."""
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    scale = _load_channels(scale_ptr, C, BLOCK_C)
    shift = _load_channels(shift_ptr, C, BLOCK_C)
    total = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in tl.range(0, HW, BLOCK_P, num_stages=STAGES):
        s = start + tl.arange(0, BLOCK_P)
        mask = (s < HW)[:, None] & (c < C)[None, :]
        p = tl.program_id(0) * HW + s
        total += tl.where(mask, _act(_load(x_ptr, p, c, mask, C) * scale + shift, ACT), 0.0)
    _store_channel_sum(out_ptr, tl.program_id(0), total, C, BLOCK_C)


@triton.jit
def _image_grad_sums_kernel(grad_ptr, x_ptr, scale_ptr, shift_ptr, mean_ptr, out_ptr, B, HW, C,
                            ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                            STAGES: tl.constexpr):
    """With SE: the five per-image sums from which the host forms SE's gate gradient and the second batch
    norm's backward sums in one read of ``grad`` (of ``a * gate``) and ``x``. With ``z = scale * x + shift``,
    ``a = act(z)``, ``d = act'(z)``, ``xc = x - mean``, rows of ``out`` (each ``(B, C)``): sum(grad * a),
    sum(grad * d), sum(d), sum(grad * d * xc), sum(d * xc)."""
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    scale = _load_channels(scale_ptr, C, BLOCK_C)
    shift = _load_channels(shift_ptr, C, BLOCK_C)
    mean = _load_channels(mean_ptr, C, BLOCK_C)
    grad_a = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    grad_d = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    d_sum = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    grad_d_xc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    d_xc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in tl.range(0, HW, BLOCK_P, num_stages=STAGES):
        s = start + tl.arange(0, BLOCK_P)
        mask = (s < HW)[:, None] & (c < C)[None, :]
        p = tl.program_id(0) * HW + s
        x = _load(x_ptr, p, c, mask, C)
        grad = _load(grad_ptr, p, c, mask, C)
        z = x * scale + shift
        # the loads leave 0 where ``mask`` is off, so grad * (anything) is 0 there; d must be masked itself
        d = tl.where(mask, _act_grad(z, ACT), 0.0)
        xc = x - mean
        grad_a += grad * _act(z, ACT)
        grad_d += grad * d
        d_sum += d
        grad_d_xc += grad * d * xc
        d_xc += d * xc
    image = tl.program_id(0)
    _store_channel_sum(out_ptr, image, grad_a, C, BLOCK_C)
    _store_channel_sum(out_ptr, B + image, grad_d, C, BLOCK_C)
    _store_channel_sum(out_ptr, 2 * B + image, d_sum, C, BLOCK_C)
    _store_channel_sum(out_ptr, 3 * B + image, grad_d_xc, C, BLOCK_C)
    _store_channel_sum(out_ptr, 4 * B + image, d_xc, C, BLOCK_C)


@triton.jit
def _act_output_grad(grad_ptr, se_ptr, q, c, qmask, P, C, HW, HAS_SE: tl.constexpr):
    """Gradient w.r.t. the second activation's output at positions ``q``. With SE after it, ``grad`` is the
    gradient of ``a * gate[b]``, and ``se_ptr`` holds two ``(B, C)`` blocks: the gate and the gradient that
    reaches ``a`` through the pooling, already divided by ``HW``."""
    grad = _load(grad_ptr, q, c, qmask, C)
    if HAS_SE:
        image = (q // HW)[:, None] * C + c[None, :]
        gate = tl.load(se_ptr + image, mask=qmask, other=0.0)
        grad = grad * gate + tl.load(se_ptr + (P // HW) * C + image, mask=qmask, other=0.0)
    return grad


@triton.jit
def _act_bn_grad_sums_kernel(grad_ptr, x_ptr, scale_ptr, shift_ptr, mean_ptr, sum_ptr, dot_ptr, P, C, BLOCKS,
                             ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                             STAGES: tl.constexpr):
    """Per channel: ``sum(g)`` and ``sum(g * (x - mean))`` with ``g = grad * act'(scale * x + shift)``, the
    two sums the backward of ``act(BN(x))`` needs."""
    scale = _load_channels(scale_ptr, C, BLOCK_C)
    shift = _load_channels(shift_ptr, C, BLOCK_C)
    mean = _load_channels(mean_ptr, C, BLOCK_C)
    total = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    total_dot = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.range(BLOCKS, num_stages=STAGES):
        p, c, mask = _tile(tl.program_id(0) * BLOCKS + i, P, C, BLOCK_P, BLOCK_C)
        x = _load(x_ptr, p, c, mask, C)
        g = _load(grad_ptr, p, c, mask, C) * _act_grad(x * scale + shift, ACT)  # 0 where the load is masked
        total += g
        total_dot += g * (x - mean)
    _store_channel_sum(sum_ptr, tl.program_id(0), total, C, BLOCK_C)
    _store_channel_sum(dot_ptr, tl.program_id(0), total_dot, C, BLOCK_C)


@triton.jit
def _load_rows5(ptr, C, BLOCK_C: tl.constexpr):
    """The five per-channel rows the backward reads about a batch norm: scale, shift and the input-gradient
    coefficients ga, gb, gc."""
    return (_load_channels(ptr, C, BLOCK_C), _load_channels(ptr + C, C, BLOCK_C),
            _load_channels(ptr + 2 * C, C, BLOCK_C), _load_channels(ptr + 3 * C, C, BLOCK_C),
            _load_channels(ptr + 4 * C, C, BLOCK_C))


@triton.jit
def _act_bn_input_grad_kernel(grad_ptr, se_ptr, x_ptr, bn_ptr, out_ptr, P, C, HW, HAS_SE: tl.constexpr,
                              ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The gradient w.r.t. the input ``x`` of ``act(BN(x))`` (times SE's gate with ``HAS_SE``), a batch norm
    whose sums are known (``bn_ptr``: see ``_load_rows5``): for the conv's output and for ``h``. It is
    ``ga * act'(scale * x + shift) * grad + gb * x + gc``, with ``ga, gb, gc`` per channel."""
    p, c, mask = _tile(tl.program_id(0), P, C, BLOCK_P, BLOCK_C)
    scale, shift, ga, gb, gc = _load_rows5(bn_ptr, C, BLOCK_C)
    x = _load(x_ptr, p, c, mask, C)
    grad = _act_output_grad(grad_ptr, se_ptr, p, c, mask, P, C, HW, HAS_SE)
    _store(out_ptr, p, c, mask, C, ga * _act_grad(x * scale + shift, ACT) * grad + gb * x + gc)


# --- host side ---------------------------------------------------------------------------------------------

# Position blocks per program in the kernels that sum over positions: enough programs to fill a GPU, few
# enough rows of partial sums that summing them on the host costs nothing.
SUM_PROGRAMS = 128


def _sum_grid(P: int, C: int, tiles: Tiles) -> tuple[tuple[int, int], int]:
    """(grid, position blocks per program) of a kernel that sums over positions; ``grid[0]`` programs per
    channel block write one row of partial sums each."""
    blocks = triton.cdiv(P, tiles.positions)
    programs = min(blocks, SUM_PROGRAMS)
    per_program = triton.cdiv(blocks, programs)
    return (triton.cdiv(blocks, per_program), triton.cdiv(C, tiles.channels)), per_program


def _map_grid(P: int, C: int, tiles: Tiles) -> tuple[int, int]:
    return triton.cdiv(P, tiles.positions), triton.cdiv(C, tiles.channels)


def _image_grid(B: int, C: int, tiles: Tiles) -> tuple[int, int]:
    return B, triton.cdiv(C, tiles.channels)


def _partial(rows: int, C: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(rows, C, dtype=torch.float32, device=like.device)


def _uses_batch_statistics(bn: nn.BatchNorm2d) -> bool:
    return bn.training or bn.running_mean is None


def _bhwc(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> the contiguous ``(B, H, W, C)`` tensor the kernels index (no copy when ``t`` is
    channels-last already)."""
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean and biased variance per channel of a ``(B, H, W, C)`` tensor, in one pass."""
    P, C = x.numel() // x.shape[-1], x.shape[-1]
    grid, blocks = _sum_grid(P, C, TILES["sums"])
    total, total_sq = _partial(grid[0], C, x), _partial(grid[0], C, x)
    _channel_sums_kernel[grid](x, total, total_sq, P, C, blocks, **TILES["sums"].meta())
    return _batch_moments(total, total_sq, P)


def _act_bn_grad_sums(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                      mean: torch.Tensor, act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum(g)`` and ``sum(g * (x - mean))`` per channel, ``g = grad * act'(scale * x + shift)``."""
    P, C = x.numel() // x.shape[-1], x.shape[-1]
    grid, blocks = _sum_grid(P, C, TILES["sums"])
    total, dot = _partial(grid[0], C, x), _partial(grid[0], C, x)
    _act_bn_grad_sums_kernel[grid](grad, x, scale, shift, mean, total, dot, P, C, blocks, ACT=act,
                                   **TILES["sums"].meta())
    return total.sum(0), dot.sum(0)


def _act_bn_input_grad(grad: torch.Tensor, se_rows: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                       shift: torch.Tensor, coef: torch.Tensor, act: int, has_se: bool) -> torch.Tensor:
    """The gradient w.r.t. ``x`` of ``act(scale * x + shift)`` (times SE's gate with ``has_se``), stored in
    ``x``'s dtype, as eager autograd stores it."""
    B, H, W, C = x.shape
    P = B * H * W
    rows = torch.cat([scale[None], shift[None], coef]).contiguous()
    out = torch.empty_like(x)
    _act_bn_input_grad_kernel[_map_grid(P, C, TILES["map"])](grad, se_rows, x, rows, out, P, C, H * W,
                                                             HAS_SE=has_se, ACT=act, **TILES["map"].meta())
    return out


# The depth-wise conv itself runs in cuDNN, as the eager module does (bf16 weights under autocast): on an H100
# its kernels took 74 + 126 + 99 us per LocalViT-T block (forward, input and weight gradient) where Triton
# stencils of our own, which read each input nine times from global memory, took 124, 209 and 148
# (``benchmarks/RESULTS.md``). Tensors stay ``(B, H, W, C)``: a channels-last conv reads and writes them as
# they are.
def _depthwise_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``DW3x3(x)`` with ``nn.Conv2d``'s zero padding, ``(B, H, W, C)`` in and out, in ``x``'s dtype."""
    out = F.conv2d(x.permute(0, 3, 1, 2), weight.to(x.dtype), padding=1, groups=weight.shape[0])
    return _bhwc(out)


def _depthwise_conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_depthwise_conv` w.r.t. its input (``(B, H, W, C)``) and its weight (in the
    weight's dtype), from its output's gradient.

    The input gradient of a 3x3 depth-wise conv with stride 1 and padding 1 is the same conv of the output's
    gradient with each kernel turned by 180 degrees, so it runs in cuDNN's forward kernel: on an H100 that
    took 74 us per LocalViT-T block where cuDNN's data-gradient kernel, which ``convolution_backward`` picks,
    took 126 (eager profile, ``benchmarks/RESULTS.md``)."""
    grad_input = _depthwise_conv(grad, weight.flip(-2, -1))
    _, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), weight.to(x.dtype), None, [1, 1], [1, 1], [1, 1],
        False, [0, 0], weight.shape[0], [False, True, False])
    return grad_input, grad_weight.to(weight.dtype)


def _batch_moments(total: torch.Tensor, total_sq: torch.Tensor, count: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean and biased variance per channel, from per-program sums and sums of squares."""
    mean = total.sum(0) / count
    return mean, (total_sq.sum(0) / count - mean * mean).clamp_min(0.0)


def _scale_shift(gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch norm as ``scale * x + shift`` per channel; also returns 1/std."""
    rstd = torch.rsqrt(var + eps)
    scale = gamma * rstd
    return rstd, scale, beta - mean * scale


def _input_grad_coefficients(gamma: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                             total: torch.Tensor, dot: torch.Tensor, count: int, batch_stats: bool
                             ) -> torch.Tensor:
    """Rows (ga, gb, gc) with ``dL/dx = ga * g + gb * x + gc`` for a batch norm whose output gradient is
    ``g``, given ``total = sum(g)`` and ``dot = sum(g * (x - mean))``. With batch statistics the mean and
    variance depend on x, which adds the ``gb``, ``gc`` terms."""
    ga = gamma * rstd
    if not batch_stats:
        return torch.stack([ga, torch.zeros_like(ga), torch.zeros_like(ga)])
    gb = -ga * rstd * rstd * dot / count
    return torch.stack([ga, gb, -ga * total / count - gb * mean])


def _se_hidden(pooled: torch.Tensor, se_params: list[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`~lvit.models.locality.SELayer`'s excitation (Linear, ReLU, Linear, hard sigmoid) in fp32, up to
    the hard sigmoid: (first pre-activation, hidden, second pre-activation)."""
    w1, b1, w2, b2 = (p.float() for p in se_params)
    with torch.autocast(pooled.device.type, enabled=False):
        pre = F.linear(pooled, w1, b1)
        hidden = F.relu(pre)
        return pre, hidden, F.linear(hidden, w2, b2)


def _se_gate_backward(gate_grad: torch.Tensor, pooled: torch.Tensor, se_params: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The excitation's backward by hand (a custom op's kernel runs below autograd): gradients w.r.t. the
    pooled input and the four parameters, with PyTorch's conventions at the kinks (the hard sigmoid passes
    the gradient on ``-3 < z < 3`` only, the ReLU on ``pre > 0``)."""
    pre, hidden, z = _se_hidden(pooled, se_params)
    w1, w2 = se_params[0].float(), se_params[2].float()
    with torch.autocast(pooled.device.type, enabled=False):
        grad_z = gate_grad * ((z > -3) & (z < 3)) / 6
        grad_pre = (grad_z @ w2) * (pre > 0)
        grads = [grad_pre.t() @ pooled, grad_pre.sum(0), grad_z.t() @ hidden, grad_z.sum(0)]
        return grad_pre @ w1, [g.to(p.dtype) for g, p in zip(grads, se_params, strict=True)]


def _se_forward(conv: torch.Tensor, scale2: torch.Tensor, shift2: torch.Tensor, se_params: list[torch.Tensor],
                act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SE's (pooled input, gate), each ``(B, C)``; one-element stand-ins without SE."""
    if not se_params:  # two tensors, as a custom op's outputs may not alias each other; zeros, as its
        # outputs must be deterministic (torch.library.opcheck compares two runs)
        return tuple(torch.zeros(1, dtype=torch.float32, device=conv.device) for _ in range(2))
    B, H, W, C = conv.shape
    pooled = _partial(B, C, conv)
    tiles = TILES["per_image"]
    _image_pool_kernel[_image_grid(B, C, tiles)](conv, scale2, shift2, pooled, H * W, C, ACT=act,
                                                 **tiles.meta())
    pooled /= H * W
    return pooled, F.hardsigmoid(_se_hidden(pooled, se_params)[2])


def _se_backward(grad: torch.Tensor, conv: torch.Tensor, scale2: torch.Tensor, shift2: torch.Tensor,
                 mean2: torch.Tensor, pooled: torch.Tensor, gate: torch.Tensor, se_params: list[torch.Tensor],
                 act: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Backward through SE, from one read of ``grad`` and ``conv``: the second batch norm's sums
    (``sum(g)``, ``sum(g * (x - mean))``), the rows (gate, gradient through the pooling / HW) that the
    backward kernels read, and the gradients of SE's parameters."""
    B, H, W, C = conv.shape
    sums = _partial(5 * B, C, conv).view(5, B, C)
    tiles = TILES["per_image"]
    _image_grad_sums_kernel[_image_grid(B, C, tiles)](grad, conv, scale2, shift2, mean2, sums, B, H * W, C,
                                                      ACT=act, **tiles.meta())
    gate_grad, grad_d, d_sum, grad_d_xc, d_xc = sums
    pooled_grad, se_grads = _se_gate_backward(gate_grad, pooled, se_params)
    # the activation's output gradient is grad * gate + pooled_grad / HW, per image and channel
    through_pool = pooled_grad / (H * W)
    total = (gate * grad_d + through_pool * d_sum).sum(0)
    dot = (gate * grad_d_xc + through_pool * d_xc).sum(0)
    return total, dot, torch.stack([gate, through_pool]).contiguous(), se_grads


# The kernels are wrapped as two custom ops (forward, backward) so that torch.compile traces through them:
# the graph keeps them as opaque calls and compiles the rest of the block around them. Ops may not mutate
# module state, so the batch norms' running statistics are updated by the caller, from the moments the
# forward returns. Arguments: ``affine`` rows (gamma1, beta1, gamma2, beta2) in fp32; ``moments`` rows
# (mean1, var1, mean2, var2), read for a batch norm that normalises with its running statistics
# (``batch[i]`` False); ``act`` a code of ACT_CODES; ``se_params`` SE's (w1, b1, w2, b2), or empty.
@torch.library.custom_op("lvit::locality_middle", mutates_args=())
def _middle_forward(h: torch.Tensor, weight: torch.Tensor, affine: torch.Tensor, moments: torch.Tensor,
                    eps: list[float], batch: list[bool], act: int, se_params: list[torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor]:
    """(output, the depth-wise conv's input and output, the moments used (as ``moments``), SE's pooled input,
    SE's gate)."""
    B, C, H, W = h.shape
    x = _bhwc(h)
    P = B * H * W
    mean1, var1 = moments[0], moments[1]
    if batch[0]:
        mean1, var1 = _channel_moments(x)
    _, scale1, shift1 = _scale_shift(affine[0], affine[1], mean1, var1, eps[0])
    # The conv's input is stored: the conv reads it, and the weight gradient again. scale1 stands in for the
    # SE gate, which this pass does not read.
    dw_input = torch.empty_like(x)
    _scale_shift_act_kernel[_map_grid(P, C, TILES["map"])](x, scale1, shift1, scale1, dw_input, P, C, H * W,
                                                           HAS_SE=False, ACT=act, **TILES["map"].meta())
    conv = _depthwise_conv(dw_input, weight)
    mean2, var2 = _channel_moments(conv) if batch[1] else (moments[2], moments[3])
    _, scale2, shift2 = _scale_shift(affine[2], affine[3], mean2, var2, eps[1])
    pooled, gate = _se_forward(conv, scale2, shift2, se_params, act)
    out = torch.empty_like(x)
    _scale_shift_act_kernel[_map_grid(P, C, TILES["map"])](conv, scale2, shift2, gate, out, P, C, H * W,
                                                           HAS_SE=bool(se_params), ACT=act,
                                                           **TILES["map"].meta())
    used = torch.stack([mean1, var1, mean2, var2])
    return (out.permute(0, 3, 1, 2), dw_input.permute(0, 3, 1, 2), conv.permute(0, 3, 1, 2), used, pooled,
            gate)


@_middle_forward.register_fake
def _middle_forward_shapes(h: torch.Tensor, weight: torch.Tensor, affine: torch.Tensor, moments: torch.Tensor,
                           eps: list[float], batch: list[bool], act: int, se_params: list[torch.Tensor]
                           ) -> tuple[torch.Tensor, ...]:
    se_shape = h.shape[:2] if se_params else (1,)
    maps = [torch.empty_like(h, memory_format=torch.channels_last) for _ in range(3)]  # out, dw_input, conv
    return (*maps, torch.empty_like(moments), h.new_empty(se_shape, dtype=torch.float32),
            h.new_empty(se_shape, dtype=torch.float32))


@torch.library.custom_op("lvit::locality_middle_backward", mutates_args=())
def _middle_backward(grad_out: torch.Tensor, h: torch.Tensor, dw_input: torch.Tensor, conv: torch.Tensor,
                     weight: torch.Tensor, affine: torch.Tensor, moments: torch.Tensor, pooled: torch.Tensor,
                     gate: torch.Tensor, eps: list[float], batch: list[bool], act: int,
                     se_params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                             list[torch.Tensor]]:
    """Gradients w.r.t. (h, weight, affine, se_params), from the forward's inputs and saved outputs."""
    x, dw_input, conv, grad = _bhwc(h), _bhwc(dw_input), _bhwc(conv), _bhwc(grad_out)
    B, H, W, C = x.shape
    P = B * H * W
    mean1, var1, mean2, var2 = moments
    rstd1, scale1, shift1 = _scale_shift(affine[0], affine[1], mean1, var1, eps[0])
    rstd2, scale2, shift2 = _scale_shift(affine[2], affine[3], mean2, var2, eps[1])
    if se_params:
        total2, dot2, se_rows, se_grads = _se_backward(grad, conv, scale2, shift2, mean2, pooled, gate,
                                                       se_params, act)
    else:
        se_rows, se_grads = gate, []  # a stand-in pointer: the kernels read it only with SE
        total2, dot2 = _act_bn_grad_sums(grad, conv, scale2, shift2, mean2, act)
    coef2 = _input_grad_coefficients(affine[2], mean2, rstd2, total2, dot2, P, batch[1])
    conv_grad = _act_bn_input_grad(grad, se_rows, conv, scale2, shift2, coef2, act, has_se=bool(se_params))
    grad_a, grad_weight = _depthwise_conv_backward(conv_grad, dw_input, weight)
    total1, dot1 = _act_bn_grad_sums(grad_a, x, scale1, shift1, mean1, act)
    coef1 = _input_grad_coefficients(affine[0], mean1, rstd1, total1, dot1, P, batch[0])
    grad_h = _act_bn_input_grad(grad_a, gate, x, scale1, shift1, coef1, act, has_se=False)
    grad_affine = torch.stack([rstd1 * dot1, total1, rstd2 * dot2, total2])
    return grad_h.permute(0, 3, 1, 2), grad_weight, grad_affine, se_grads


@_middle_backward.register_fake
def _middle_backward_shapes(grad_out: torch.Tensor, h: torch.Tensor, dw_input: torch.Tensor,
                            conv: torch.Tensor, weight: torch.Tensor, affine: torch.Tensor,
                            moments: torch.Tensor, pooled: torch.Tensor, gate: torch.Tensor, eps: list[float],
                            batch: list[bool], act: int, se_params: list[torch.Tensor]) -> tuple[Any, ...]:
    return (torch.empty_like(h, memory_format=torch.channels_last), torch.empty_like(weight),
            torch.empty_like(affine), [torch.empty_like(p) for p in se_params])


def _save_for_backward(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    h, weight, affine, _, eps, batch, act, se_params = inputs
    _, dw_input, conv, moments, pooled, gate = output
    ctx.mark_non_differentiable(dw_input, conv, moments, pooled, gate)
    # else autograd passes a zero-filled gradient for each of those five; the node only runs when ``out`` has
    # a gradient, the one differentiable output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, dw_input, conv, weight, affine, moments, pooled, gate, *se_params)
    ctx.eps, ctx.batch, ctx.act = eps, batch, act


def _middle_gradients(ctx: Any, grad_out: torch.Tensor, *_non_differentiable: None) -> tuple[Any, ...]:
    h, dw_input, conv, weight, affine, moments, pooled, gate, *se_params = ctx.saved_tensors
    grad_h, grad_weight, grad_affine, se_grads = _middle_backward(
        grad_out, h, dw_input, conv, weight, affine, moments, pooled, gate, ctx.eps, ctx.batch, ctx.act,
        se_params)
    return grad_h, grad_weight, grad_affine, None, None, None, None, se_grads


_middle_forward.register_autograd(_middle_gradients, setup_context=_save_for_backward)


def _running_moments(bn: nn.BatchNorm2d, device: torch.device) -> list[torch.Tensor]:
    """The running mean and variance ``bn`` normalises with in eval mode; zeros (unread) where it uses the
    batch's."""
    if _uses_batch_statistics(bn):
        return [torch.zeros(bn.num_features, dtype=torch.float32, device=device)] * 2
    return [bn.running_mean.float(), bn.running_var.float()]


def _update_running_statistics(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d.forward`` does to its buffers in training, given the batch's mean and biased
    variance: the momentum update, with the unbiased variance, and ``num_batches_tracked``."""
    if not (bn.training and bn.track_running_stats):
        return
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
    bn.running_var.lerp_((var * count / max(count - 1, 1)).to(bn.running_var.dtype), momentum)


def locality_middle(h: torch.Tensor, bn1: nn.BatchNorm2d, dw: nn.Conv2d, bn2: nn.BatchNorm2d, act: str,
                    se: SELayer | None = None) -> torch.Tensor:
    """``act(bn2(dw(act(bn1(h)))))``, then ``se`` if given, for a 3x3 stride-1 depth-wise ``dw``, with the
    modules' parameters and batch-norm state, in the Triton kernels above. ``h`` is ``(B, C, H, W)`` on a
    device Triton runs on."""
    se_params = [se.fc[0].weight, se.fc[0].bias, se.fc[2].weight, se.fc[2].bias] if se is not None else []
    affine = torch.stack([bn1.weight, bn1.bias, bn2.weight, bn2.bias]).float()
    moments = torch.stack([*_running_moments(bn1, h.device), *_running_moments(bn2, h.device)])
    out, _, _, used, _, _ = _middle_forward(h, dw.weight, affine, moments, [bn1.eps, bn2.eps],
                                         [_uses_batch_statistics(bn1), _uses_batch_statistics(bn2)],
                                         ACT_CODES[act], se_params)
    count = h.shape[0] * h.shape[2] * h.shape[3]
    _update_running_statistics(bn1, used[0], used[1], count)
    _update_running_statistics(bn2, used[2], used[3], count)
    return out
