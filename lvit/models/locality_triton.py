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
work outweighs what they save, so they stay opt-in (``set_fused_locality``), and the training loop takes them
only into the CUDA graph it replays (``lvit.models.locality.fused_locality``).

Forward: a statistics pass over ``h``; the first activation pass, which stores the conv's input; the conv;
a statistics pass over its output; with SE, a pooling pass; the second activation pass. Backward: a sums
pass (per image with SE: the gate's gradient and the second batch norm's sums together); the conv output's
gradient, stored once in the storage dtype (as eager autograd stores it); the conv's input and weight
gradients; a sums pass for the first batch norm; its input gradient. Each batch norm's per-channel
arithmetic (from the sums to scale and shift, and to the backward's coefficients) is one small kernel each
way, and SE's excitation (two small linear layers on the pooled ``(B, C)``) one kernel forward and two
backward, in fp32. Forward and backward are custom ops
(``lvit::locality_middle``, ``lvit::locality_middle_backward``), so ``torch.compile`` keeps them in its graph
instead of breaking it.

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
    """SE's pooling: ``out[b, c] = mean of act(scale * x + shift)`` over image b. One program per image and
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
    _store_channel_sum(out_ptr, tl.program_id(0), total / HW, C, BLOCK_C)


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
def _act_output_grad(grad_ptr, gate_ptr, pool_grad_ptr, q, c, qmask, C, HW, HAS_SE: tl.constexpr):
    """Gradient w.r.t. the second activation's output at positions ``q``. With SE after it, ``grad`` is the
    gradient of ``a * gate[b]``; ``gate_ptr`` and ``pool_grad_ptr`` hold ``(B, C)`` rows: the gate and the
    gradient that reaches ``a`` through the pooling (already divided by ``HW``)."""
    grad = _load(grad_ptr, q, c, qmask, C)
    if HAS_SE:
        image = (q // HW)[:, None] * C + c[None, :]
        gate = tl.load(gate_ptr + image, mask=qmask, other=0.0)
        grad = grad * gate + tl.load(pool_grad_ptr + image, mask=qmask, other=0.0)
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
def _act_bn_input_grad_kernel(grad_ptr, gate_ptr, pool_grad_ptr, x_ptr, scale_ptr, shift_ptr, coef_ptr,
                              out_ptr, P, C, HW, HAS_SE: tl.constexpr, ACT: tl.constexpr,
                              BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The gradient w.r.t. the input ``x`` of ``act(scale * x + shift)`` (times SE's gate with ``HAS_SE``), a
    batch norm, for the conv's output and for ``h``: ``scale * act'(scale * x + shift) * grad + gb * x + gc``
    with the rows (gb, gc) at ``coef_ptr`` (``_bn_grad_kernel``)."""
    p, c, mask = _tile(tl.program_id(0), P, C, BLOCK_P, BLOCK_C)
    scale = _load_channels(scale_ptr, C, BLOCK_C)
    shift = _load_channels(shift_ptr, C, BLOCK_C)
    x = _load(x_ptr, p, c, mask, C)
    grad = _act_output_grad(grad_ptr, gate_ptr, pool_grad_ptr, p, c, mask, C, HW, HAS_SE)
    gb, gc = _load_channels(coef_ptr, C, BLOCK_C), _load_channels(coef_ptr + C, C, BLOCK_C)
    _store(out_ptr, p, c, mask, C, scale * _act_grad(x * scale + shift, ACT) * grad + gb * x + gc)


@triton.jit
def _sum_rows(ptr, ROWS, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """The sum over the ``ROWS`` rows of a ``(ROWS, C)`` buffer of partial sums, at the program's channels."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, ROWS, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R)
        mask = (r < ROWS)[:, None] & (c < C)[None, :]
        total += tl.sum(tl.load(ptr + r[:, None] * C + c[None, :], mask=mask, other=0.0), 0)
    return total


@triton.jit
def _load_row(ptr, C, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    return tl.load(ptr + c, mask=c < C, other=0.0)


@triton.jit
def _store_row(ptr, values, C, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(ptr + c, values, mask=c < C)


@triton.jit
def _bn_stats_kernel(sum_ptr, sq_ptr, ROWS, running_ptr, affine_ptr, mean_ptr, var_ptr, unbiased_var_ptr,
                     rstd_ptr, scale_ptr, shift_ptr, C, count, unbias, eps,
                     BATCH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """A batch norm's statistic rows (``MEAN`` to ``SHIFT`` below), from ``ROWS`` rows of partial sums and
    sums of squares over ``count`` positions (``BATCH``: training), or from the running (mean, var) rows at
    ``running_ptr`` (eval); with the (gamma, beta) rows at ``affine_ptr``; ``unbias`` is
    ``count / (count - 1)``."""
    if BATCH:
        mean = _sum_rows(sum_ptr, ROWS, C, BLOCK_R, BLOCK_C) / count
        var = tl.maximum(_sum_rows(sq_ptr, ROWS, C, BLOCK_R, BLOCK_C) / count - mean * mean, 0.0)
    else:
        mean = _load_row(running_ptr, C, BLOCK_C)
        var = _load_row(running_ptr + C, C, BLOCK_C)
    rstd = 1.0 / tl.sqrt(var + eps)
    scale = _load_row(affine_ptr, C, BLOCK_C) * rstd
    _store_row(mean_ptr, mean, C, BLOCK_C)
    _store_row(var_ptr, var, C, BLOCK_C)
    _store_row(unbiased_var_ptr, var * unbias, C, BLOCK_C)
    _store_row(rstd_ptr, rstd, C, BLOCK_C)
    _store_row(scale_ptr, scale, C, BLOCK_C)
    _store_row(shift_ptr, _load_row(affine_ptr + C, C, BLOCK_C) - mean * scale, C, BLOCK_C)


@triton.jit
def _bn_grad_kernel(total_ptr, dot_ptr, ROWS, mean_ptr, rstd_ptr, scale_ptr, coef_ptr, grad_affine_ptr, C,
                    count, BATCH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """From ``ROWS`` rows of partial ``sum(g)`` and ``sum(g * (x - mean))``, ``g`` the gradient of a batch
    norm's output over ``count`` positions: the rows (gb, gc) of its input gradient
    ``scale * g + gb * x + gc`` at ``coef_ptr``, and the gradients of (gamma, beta) at ``grad_affine_ptr``.
    With batch statistics (``BATCH``) the mean and variance depend on x, which adds the gb, gc terms."""
    total = _sum_rows(total_ptr, ROWS, C, BLOCK_R, BLOCK_C)
    dot = _sum_rows(dot_ptr, ROWS, C, BLOCK_R, BLOCK_C)
    rstd = _load_row(rstd_ptr, C, BLOCK_C)
    _store_row(grad_affine_ptr, rstd * dot, C, BLOCK_C)
    _store_row(grad_affine_ptr + C, total, C, BLOCK_C)
    gb = tl.zeros((BLOCK_C,), dtype=tl.float32)
    gc = gb
    if BATCH:
        scale = _load_row(scale_ptr, C, BLOCK_C)
        gb = -scale * rstd * rstd * dot / count
        gc = -scale * total / count - gb * _load_row(mean_ptr, C, BLOCK_C)
    _store_row(coef_ptr, gb, C, BLOCK_C)
    _store_row(coef_ptr + C, gc, C, BLOCK_C)


@triton.jit
def _hard_sigmoid_grad(gate):
    """d hardsigmoid(z) / dz read off ``gate = hardsigmoid(z)``: 1/6 where ``0 < gate < 1``. PyTorch's
    backward tests ``-3 < z < 3`` instead; the two differ only where ``z + 3`` rounds to exactly 0 or 6."""
    return tl.where((gate > 0.0) & (gate < 1.0), 1.0 / 6.0, 0.0)


@triton.jit
def _load_block(ptr, rows, cols, stride, row_mask, col_mask):
    """The block ``rows`` x ``cols`` of a row-major matrix of ``stride`` columns, in fp32, 0 outside it."""
    offsets = rows[:, None] * stride + cols[None, :]
    return tl.load(ptr + offsets, mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _image_block(B, R, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr):
    """This program's images and the excitation's hidden units, with the masks of those that exist."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    r = tl.arange(0, BLOCK_R)
    return b, r, b < B, r < R


@triton.jit
def _se_excite_kernel(pooled_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, hidden_ptr, gate_ptr, B, C, R,
                      BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    """SE's excitation for ``BLOCK_B`` images, in fp32: ``hidden = relu(pooled W1^T + b1)`` (``(B, R)``, kept
    for the backward) and ``gate = hardsigmoid(hidden W2^T + b2)`` (``(B, C)``)."""
    b, r, b_in, r_in = _image_block(B, R, BLOCK_B, BLOCK_R)
    pre = tl.zeros((BLOCK_B, BLOCK_R), dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        pooled = _load_block(pooled_ptr, b, c, C, b_in, c < C)
        pre += tl.dot(pooled, tl.trans(_load_block(w1_ptr, r, c, C, r_in, c < C)), input_precision="ieee")
    hidden = tl.maximum(pre + tl.load(b1_ptr + r, mask=r_in, other=0.0).to(tl.float32)[None, :], 0.0)
    tl.store(hidden_ptr + b[:, None] * R + r[None, :], hidden, mask=b_in[:, None] & r_in[None, :])
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        z = tl.dot(hidden, tl.trans(_load_block(w2_ptr, c, r, R, c < C, r_in)), input_precision="ieee")
        z += tl.load(b2_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
        gate = tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0
        tl.store(gate_ptr + b[:, None] * C + c[None, :], gate, mask=b_in[:, None] & (c < C)[None, :])


@triton.jit
def _se_input_grad_kernel(gate_grad_ptr, gate_ptr, hidden_ptr, w1_ptr, w2_ptr, grad_pre_ptr, pool_grad_ptr,
                          B, C, R, HW, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    """For ``BLOCK_B`` images: the gradient w.r.t. the excitation's first pre-activation, ``grad_pre =
    (gate_grad * hardsigmoid'(z)) W2`` where ``hidden > 0`` (ReLU's gradient, as PyTorch's: none at 0),
    ``(B, R)``; and the gradient that reaches the activation through the pooling, ``grad_pre W1 / HW``,
    ``(B, C)``."""
    b, r, b_in, r_in = _image_block(B, R, BLOCK_B, BLOCK_R)
    grad_hidden = tl.zeros((BLOCK_B, BLOCK_R), dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        grad_z = (_load_block(gate_grad_ptr, b, c, C, b_in, c < C)
                  * _hard_sigmoid_grad(_load_block(gate_ptr, b, c, C, b_in, c < C)))
        grad_hidden += tl.dot(grad_z, _load_block(w2_ptr, c, r, R, c < C, r_in), input_precision="ieee")
    grad_pre = tl.where(_load_block(hidden_ptr, b, r, R, b_in, r_in) > 0.0, grad_hidden, 0.0)
    tl.store(grad_pre_ptr + b[:, None] * R + r[None, :], grad_pre, mask=b_in[:, None] & r_in[None, :])
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        pool_grad = tl.dot(grad_pre, _load_block(w1_ptr, r, c, C, r_in, c < C), input_precision="ieee") / HW
        tl.store(pool_grad_ptr + b[:, None] * C + c[None, :], pool_grad,
                 mask=b_in[:, None] & (c < C)[None, :])


@triton.jit
def _se_param_grad_kernel(sums_ptr, gate_ptr, hidden_ptr, grad_pre_ptr, pooled_ptr, pool_grad_ptr,
                          total_ptr, dot_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, B, C, R,
                          BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    """For this program's channels, summed over the batch: the gradients of SE's parameters (``W1``'s columns,
    ``W2``'s rows, ``b2``; ``b1`` from program 0) and the second batch norm's sums (``total = sum(gate *
    grad_d + pool_grad * d_sum)``, ``dot`` likewise with the centred rows), from the five per-image rows of
    ``_image_grad_sums_kernel`` at ``sums_ptr`` and what ``_se_input_grad_kernel`` wrote."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    r = tl.arange(0, BLOCK_R)
    c_in, r_in = c < C, r < R
    dw1 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    dw2 = tl.zeros((BLOCK_C, BLOCK_R), dtype=tl.float32)
    db1 = tl.zeros((BLOCK_R,), dtype=tl.float32)
    db2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    dot = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, B, BLOCK_B):
        b = start + tl.arange(0, BLOCK_B)
        b_in = b < B
        gate = _load_block(gate_ptr, b, c, C, b_in, c_in)
        grad_z = _load_block(sums_ptr, b, c, C, b_in, c_in) * _hard_sigmoid_grad(gate)
        grad_pre = _load_block(grad_pre_ptr, b, r, R, b_in, r_in)
        hidden = _load_block(hidden_ptr, b, r, R, b_in, r_in)
        pooled = _load_block(pooled_ptr, b, c, C, b_in, c_in)
        dw2 += tl.dot(tl.trans(grad_z), hidden, input_precision="ieee")
        dw1 += tl.dot(tl.trans(grad_pre), pooled, input_precision="ieee")
        db1 += tl.sum(grad_pre, 0)
        db2 += tl.sum(grad_z, 0)
        pool_grad = _load_block(pool_grad_ptr, b, c, C, b_in, c_in)
        total += tl.sum(gate * _load_block(sums_ptr + B * C, b, c, C, b_in, c_in)
                        + pool_grad * _load_block(sums_ptr + 2 * B * C, b, c, C, b_in, c_in), 0)
        dot += tl.sum(gate * _load_block(sums_ptr + 3 * B * C, b, c, C, b_in, c_in)
                      + pool_grad * _load_block(sums_ptr + 4 * B * C, b, c, C, b_in, c_in), 0)
    tl.store(total_ptr + c, total, mask=c_in)
    tl.store(dot_ptr + c, dot, mask=c_in)
    tl.store(db2_ptr + c, db2.to(db2_ptr.dtype.element_ty), mask=c_in)
    tl.store(dw1_ptr + r[:, None] * C + c[None, :], dw1.to(dw1_ptr.dtype.element_ty),
             mask=r_in[:, None] & c_in[None, :])
    tl.store(dw2_ptr + c[:, None] * R + r[None, :], dw2.to(dw2_ptr.dtype.element_ty),
             mask=c_in[:, None] & r_in[None, :])
    if tl.program_id(0) == 0:
        tl.store(db1_ptr + r, db1.to(db1_ptr.dtype.element_ty), mask=r_in)


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


# A batch norm's per-channel rows, one ``(STAT_ROWS, C)`` fp32 tensor per batch norm that the forward writes
# once and the backward reads: the mean and biased variance it normalised with, the unbiased variance (what
# ``running_var`` moves towards), 1/std, and the normalisation as ``scale * x + shift``. One kernel computes
# them, and one the backward's coefficients from them: as PyTorch operators on ``(C,)`` vectors they were
# some eighty small kernels per block, forward and backward (``benchmarks/RESULTS.md``).
MEAN, VAR, UNBIASED_VAR, RSTD, SCALE, SHIFT = range(6)
STAT_ROWS = 6
# The two kernels that finish them: rows of partial sums and channels per step; a program per channel block.
# Narrow channel blocks: these kernels are short chains of dependent steps (about 8 µs a call on an H200 at
# ``3ba2c3e``, on 12 programs of 64 channels, for floors under 0.2 µs), so more programs and fewer steps each.
FINAL_META = dict(BLOCK_R=64, BLOCK_C=16, num_warps=4)


def _final_grid(C: int) -> tuple[int]:
    return (triton.cdiv(C, FINAL_META["BLOCK_C"]),)


def _bn_statistics(x: torch.Tensor | None, affine: torch.Tensor, running: torch.Tensor, eps: float,
                   count: int, out: torch.Tensor) -> None:
    """Write a batch norm's ``(STAT_ROWS, C)`` rows into ``out``: from the batch's moments over the
    ``(B, H, W, C)`` tensor ``x`` (one pass), or, with ``x`` None, from the rows (mean, var) of ``running``.
    ``affine``: rows (gamma, beta); ``count``: positions per channel."""
    C = affine.shape[1]
    sums = squares = running  # unread without x
    rows = 0
    if x is not None:
        grid, blocks = _sum_grid(count, C, TILES["sums"])
        sums, squares = _partial(grid[0], C, x), _partial(grid[0], C, x)
        _channel_sums_kernel[grid](x, sums, squares, count, C, blocks, **TILES["sums"].meta())
        rows = grid[0]
    _bn_stats_kernel[_final_grid(C)](sums, squares, rows, running, affine, *out, C, float(count),
                                     count / max(count - 1, 1), eps, BATCH=x is not None, **FINAL_META)


def _bn_gradients(total: torch.Tensor, dot: torch.Tensor, stats: torch.Tensor, count: int, batch: bool,
                  grad_affine: torch.Tensor) -> torch.Tensor:
    """A batch norm's input-gradient rows (gb, gc) ``(2, C)``, from partial rows of ``sum(g)`` and
    ``sum(g * (x - mean))`` (``total``, ``dot``: ``(rows, C)``) and its ``stats``; writes the gradients of
    (gamma, beta) into the ``(2, C)`` ``grad_affine``."""
    C = stats.shape[1]
    coef = _partial(2, C, stats)
    _bn_grad_kernel[_final_grid(C)](total, dot, total.shape[0], stats[MEAN], stats[RSTD], stats[SCALE], coef,
                                    grad_affine, C, float(count), BATCH=batch, **FINAL_META)
    return coef


def _act_bn_grad_sums(grad: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, act: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial rows of ``sum(g)`` and ``sum(g * (x - mean))`` per channel, ``g = grad * act'(scale * x +
    shift)``: what :func:`_bn_gradients` sums."""
    P, C = x.numel() // x.shape[-1], x.shape[-1]
    grid, blocks = _sum_grid(P, C, TILES["sums"])
    total, dot = _partial(grid[0], C, x), _partial(grid[0], C, x)
    _act_bn_grad_sums_kernel[grid](grad, x, stats[SCALE], stats[SHIFT], stats[MEAN], total, dot, P, C, blocks,
                                   ACT=act, **TILES["sums"].meta())
    return total, dot


def _act_bn_input_grad(grad: torch.Tensor, gate: torch.Tensor, pool_grad: torch.Tensor, x: torch.Tensor,
                       stats: torch.Tensor, coef: torch.Tensor, act: int, has_se: bool) -> torch.Tensor:
    """The gradient w.r.t. ``x`` of ``act(BN(x))`` (times SE's gate with ``has_se``, the gradient through SE's
    pooling added), stored in ``x``'s dtype, as eager autograd stores it."""
    B, H, W, C = x.shape
    P = B * H * W
    out = torch.empty_like(x)
    scale, shift = stats[SCALE], stats[SHIFT]
    _act_bn_input_grad_kernel[_map_grid(P, C, TILES["map"])](grad, gate, pool_grad, x, scale, shift, coef,
                                                             out, P, C, H * W, HAS_SE=has_se, ACT=act,
                                                             **TILES["map"].meta())
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
    cast = weight.to(x.dtype)
    grad_input = _depthwise_conv(grad, cast.flip(-2, -1))
    _, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), cast, None, [1, 1], [1, 1], [1, 1], False, [0, 0],
        weight.shape[0], [False, True, False])
    return grad_input, grad_weight.to(weight.dtype)


def _se_meta(R: int, per_image: bool) -> dict[str, int]:
    """Launch settings of the excitation kernels for hidden size ``R``: ``tl.dot`` needs 16 or more each way,
    a step holds at most 4096 weights, and a wide hidden size takes more warps so that the weight-gradient
    accumulators fit in registers (no spills on sm_90 up to R = 192, the SE-4 rows').

    These kernels run on few programs, each a chain of dependent steps, so their time is the chain's length
    (on an H200 at ``3ba2c3e``, 12-51 µs a call against memory floors of 0.3-1.3 µs). The per-image kernels
    (``per_image``: one program per 16 images) take the widest channel blocks that hold, the fewest steps
    over the channels; the parameters' gradient (one program per channel block, a step per image block)
    takes narrow channel blocks for more programs, and the widest image blocks that hold."""
    block_r = max(16, triton.next_power_of_2(R))
    widest = max(16, min(256, 4096 // block_r))
    if per_image:
        return dict(BLOCK_B=16, BLOCK_C=widest, BLOCK_R=block_r, num_warps=max(4, block_r // 32))
    return dict(BLOCK_B=min(64, widest), BLOCK_C=16, BLOCK_R=block_r, num_warps=max(4, block_r // 32))


def _se_forward(conv: torch.Tensor, stats2: torch.Tensor, se_params: list[torch.Tensor], act: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SE's pooled input and gate (each ``(B, C)``) and its excitation's hidden activation (``(B, R)``), in
    two kernels; one-element stand-ins without SE."""
    if not se_params:  # three tensors, as a custom op's outputs may not alias each other; zeros, as its
        # outputs must be deterministic (torch.library.opcheck compares two runs)
        return tuple(torch.zeros(1, dtype=torch.float32, device=conv.device) for _ in range(3))
    B, H, W, C = conv.shape
    pooled = _partial(B, C, conv)
    tiles = TILES["per_image"]
    _image_pool_kernel[_image_grid(B, C, tiles)](conv, stats2[SCALE], stats2[SHIFT], pooled, H * W, C,
                                                 ACT=act, **tiles.meta())
    w1, b1, w2, b2 = se_params
    R = w1.shape[0]
    hidden, gate = _partial(B, R, conv), _partial(B, C, conv)
    meta = _se_meta(R, per_image=True)
    _se_excite_kernel[(triton.cdiv(B, meta["BLOCK_B"]),)](pooled, w1, b1, w2, b2, hidden, gate, B, C, R,
                                                          **meta)
    return pooled, gate, hidden


def _se_backward(grad: torch.Tensor, conv: torch.Tensor, stats2: torch.Tensor, pooled: torch.Tensor,
                 gate: torch.Tensor, hidden: torch.Tensor, se_params: list[torch.Tensor], act: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Backward through SE in three kernels, from one read of ``grad`` and ``conv``: the second batch norm's
    sums (``sum(g)``, ``sum(g * (x - mean))``, each ``(1, C)``), the gradient that reaches the activation
    through the pooling (``(B, C)``, divided by HW), and the gradients of SE's parameters."""
    B, H, W, C = conv.shape
    sums = _partial(5 * B, C, conv).view(5, B, C)
    tiles = TILES["per_image"]
    _image_grad_sums_kernel[_image_grid(B, C, tiles)](grad, conv, stats2[SCALE], stats2[SHIFT], stats2[MEAN],
                                                      sums, B, H * W, C, ACT=act, **tiles.meta())
    w1, _, w2, _ = se_params
    R = w1.shape[0]
    meta = _se_meta(R, per_image=True)
    grad_pre, pool_grad = _partial(B, R, conv), _partial(B, C, conv)
    _se_input_grad_kernel[(triton.cdiv(B, meta["BLOCK_B"]),)](sums, gate, hidden, w1, w2, grad_pre, pool_grad,
                                                              B, C, R, H * W, **meta)
    total, dot = _partial(1, C, conv), _partial(1, C, conv)
    se_grads = [torch.empty_like(p) for p in se_params]
    meta = _se_meta(R, per_image=False)
    _se_param_grad_kernel[(triton.cdiv(C, meta["BLOCK_C"]),)](sums, gate, hidden, grad_pre, pooled, pool_grad,
                                                              total, dot, *se_grads, B, C, R, **meta)
    return total, dot, pool_grad, se_grads


# The kernels are wrapped as two custom ops (forward, backward) so that torch.compile traces through them:
# the graph keeps them as opaque calls and compiles the rest of the block around them. Ops may not mutate
# module state, so the batch norms' running statistics are updated by the caller, from the statistic rows the
# forward returns (``(2, STAT_ROWS, C)``, one block per batch norm). Arguments: ``affine`` rows (gamma1,
# beta1, gamma2, beta2) in fp32; ``running`` rows (mean1, var1, mean2, var2), read for a batch norm that
# normalises with its running statistics (``batch[i]`` False); ``act`` a code of ACT_CODES; ``se_params``
# SE's (w1, b1, w2, b2), or empty.
@torch.library.custom_op("lvit::locality_middle", mutates_args=())
def _middle_forward(h: torch.Tensor, weight: torch.Tensor, affine: torch.Tensor, running: torch.Tensor,
                    eps: list[float], batch: list[bool], act: int, se_params: list[torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor, torch.Tensor]:
    """(output, the depth-wise conv's input and output, the batch norms' statistic rows, SE's pooled input,
    gate and hidden activation)."""
    B, C, H, W = h.shape
    x = _bhwc(h)
    P = B * H * W
    stats = _partial(2 * STAT_ROWS, C, x).view(2, STAT_ROWS, C)
    _bn_statistics(x if batch[0] else None, affine[0:2], running[0:2], eps[0], P, stats[0])
    # The conv's input is stored: the conv reads it, and the weight gradient again. The scale row stands in
    # for the SE gate, which this pass does not read.
    dw_input = torch.empty_like(x)
    scale1, shift1 = stats[0, SCALE], stats[0, SHIFT]
    _scale_shift_act_kernel[_map_grid(P, C, TILES["map"])](x, scale1, shift1, scale1, dw_input, P, C, H * W,
                                                           HAS_SE=False, ACT=act, **TILES["map"].meta())
    conv = _depthwise_conv(dw_input, weight)
    _bn_statistics(conv if batch[1] else None, affine[2:4], running[2:4], eps[1], P, stats[1])
    pooled, gate, hidden = _se_forward(conv, stats[1], se_params, act)
    out = torch.empty_like(x)
    scale2, shift2 = stats[1, SCALE], stats[1, SHIFT]
    _scale_shift_act_kernel[_map_grid(P, C, TILES["map"])](conv, scale2, shift2, gate, out, P, C, H * W,
                                                           HAS_SE=bool(se_params), ACT=act,
                                                           **TILES["map"].meta())
    return (out.permute(0, 3, 1, 2), dw_input.permute(0, 3, 1, 2), conv.permute(0, 3, 1, 2), stats, pooled,
            gate, hidden)


@_middle_forward.register_fake
def _middle_forward_shapes(h: torch.Tensor, weight: torch.Tensor, affine: torch.Tensor, running: torch.Tensor,
                           eps: list[float], batch: list[bool], act: int, se_params: list[torch.Tensor]
                           ) -> tuple[torch.Tensor, ...]:
    se_shape = h.shape[:2] if se_params else (1,)
    hidden_shape = (h.shape[0], se_params[0].shape[0]) if se_params else (1,)
    maps = [torch.empty_like(h, memory_format=torch.channels_last) for _ in range(3)]  # out, dw_input, conv
    return (*maps, affine.new_empty((2, STAT_ROWS, h.shape[1])), h.new_empty(se_shape, dtype=torch.float32),
            h.new_empty(se_shape, dtype=torch.float32), h.new_empty(hidden_shape, dtype=torch.float32))


@torch.library.custom_op("lvit::locality_middle_backward", mutates_args=())
def _middle_backward(grad_out: torch.Tensor, h: torch.Tensor, dw_input: torch.Tensor, conv: torch.Tensor,
                     weight: torch.Tensor, stats: torch.Tensor, pooled: torch.Tensor, gate: torch.Tensor,
                     hidden: torch.Tensor, batch: list[bool], act: int, se_params: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Gradients w.r.t. (h, weight, affine, se_params), from the forward's inputs and saved outputs."""
    x, dw_input, conv, grad = _bhwc(h), _bhwc(dw_input), _bhwc(conv), _bhwc(grad_out)
    B, H, W, C = x.shape
    P = B * H * W
    grad_affine = _partial(4, C, x)  # rows (gamma1, beta1, gamma2, beta2), as ``affine``
    if se_params:
        total2, dot2, pool_grad, se_grads = _se_backward(grad, conv, stats[1], pooled, gate, hidden,
                                                         se_params, act)
    else:
        pool_grad, se_grads = gate, []  # a stand-in pointer: the kernels read it only with SE
        total2, dot2 = _act_bn_grad_sums(grad, conv, stats[1], act)
    coef2 = _bn_gradients(total2, dot2, stats[1], P, batch[1], grad_affine[2:4])
    conv_grad = _act_bn_input_grad(grad, gate, pool_grad, conv, stats[1], coef2, act, has_se=bool(se_params))
    grad_a, grad_weight = _depthwise_conv_backward(conv_grad, dw_input, weight)
    total1, dot1 = _act_bn_grad_sums(grad_a, x, stats[0], act)
    coef1 = _bn_gradients(total1, dot1, stats[0], P, batch[0], grad_affine[0:2])
    grad_h = _act_bn_input_grad(grad_a, gate, gate, x, stats[0], coef1, act, has_se=False)
    return grad_h.permute(0, 3, 1, 2), grad_weight, grad_affine, se_grads


@_middle_backward.register_fake
def _middle_backward_shapes(grad_out: torch.Tensor, h: torch.Tensor, dw_input: torch.Tensor,
                            conv: torch.Tensor, weight: torch.Tensor, stats: torch.Tensor,
                            pooled: torch.Tensor, gate: torch.Tensor, hidden: torch.Tensor, batch: list[bool],
                            act: int, se_params: list[torch.Tensor]) -> tuple[Any, ...]:
    return (torch.empty_like(h, memory_format=torch.channels_last), torch.empty_like(weight),
            stats.new_empty((4, stats.shape[2])), [torch.empty_like(p) for p in se_params])


def _save_for_backward(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    h, weight, _, _, _, batch, act, se_params = inputs
    _, dw_input, conv, stats, pooled, gate, hidden = output
    ctx.mark_non_differentiable(dw_input, conv, stats, pooled, gate, hidden)
    # else autograd passes a zero-filled gradient for each of those six; the node only runs when ``out`` has
    # a gradient, the one differentiable output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, dw_input, conv, weight, stats, pooled, gate, hidden, *se_params)
    ctx.batch, ctx.act = batch, act


def _middle_gradients(ctx: Any, grad_out: torch.Tensor, *_non_differentiable: None) -> tuple[Any, ...]:
    h, dw_input, conv, weight, stats, pooled, gate, hidden, *se_params = ctx.saved_tensors
    grad_h, grad_weight, grad_affine, se_grads = _middle_backward(
        grad_out, h, dw_input, conv, weight, stats, pooled, gate, hidden, ctx.batch, ctx.act, se_params)
    return grad_h, grad_weight, grad_affine, None, None, None, None, se_grads


_middle_forward.register_autograd(_middle_gradients, setup_context=_save_for_backward)


def _running_moments(bns: list[nn.BatchNorm2d], device: torch.device) -> torch.Tensor:
    """Rows (mean, var) per batch norm of the running statistics it normalises with in eval mode. Where every
    one uses the batch's (training), the rows are unread and left uninitialised: no kernel fills them."""
    C = bns[0].num_features
    if all(_uses_batch_statistics(bn) for bn in bns):
        return torch.empty(2 * len(bns), C, dtype=torch.float32, device=device)
    zeros = torch.zeros(C, dtype=torch.float32, device=device)
    return torch.stack([row for bn in bns for row in (
        (zeros, zeros) if _uses_batch_statistics(bn) else (bn.running_mean.float(), bn.running_var.float()))])


def _update_running_statistics(bns: list[nn.BatchNorm2d], stats: torch.Tensor) -> None:
    """What ``nn.BatchNorm2d.forward`` does to its buffers in training, for each of ``bns`` from its block of
    ``stats``: ``num_batches_tracked``, and the momentum update towards the batch's mean and unbiased
    variance. One multi-tensor kernel for the counters, one per batch norm for its two buffers."""
    tracked = [(bn, rows) for bn, rows in zip(bns, stats, strict=True)
               if bn.training and bn.track_running_stats]
    if not tracked:
        return
    torch._foreach_add_([bn.num_batches_tracked for bn, _ in tracked], 1)
    for bn, rows in tracked:
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        batch_rows = [rows[MEAN].to(bn.running_mean.dtype), rows[UNBIASED_VAR].to(bn.running_var.dtype)]
        torch._foreach_lerp_([bn.running_mean, bn.running_var], batch_rows, momentum)


def locality_middle(h: torch.Tensor, bn1: nn.BatchNorm2d, dw: nn.Conv2d, bn2: nn.BatchNorm2d, act: str,
                    se: SELayer | None = None) -> torch.Tensor:
    """``act(bn2(dw(act(bn1(h)))))``, then ``se`` if given, for a 3x3 stride-1 depth-wise ``dw``, with the
    modules' parameters and batch-norm state, in the Triton kernels above. ``h`` is ``(B, C, H, W)`` on a
    device Triton runs on."""
    se_params = [se.fc[0].weight, se.fc[0].bias, se.fc[2].weight, se.fc[2].bias] if se is not None else []
    affine = torch.stack([bn1.weight, bn1.bias, bn2.weight, bn2.bias]).float()
    out, _, _, stats, _, _, _ = _middle_forward(h, dw.weight, affine, _running_moments([bn1, bn2], h.device),
                                             [bn1.eps, bn2.eps],
                                             [_uses_batch_statistics(bn1), _uses_batch_statistics(bn2)],
                                             ACT_CODES[act], se_params)
    _update_running_statistics([bn1, bn2], stats)
    return out
