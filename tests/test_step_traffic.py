"""benchmarks/step_traffic.py counts the bytes an operator reads and writes: views and operators that hand
back their input move nothing, an expanded tensor is read once, a slice only as far as it spans."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from step_traffic import TrafficCounter  # noqa: E402


def test_bytes_read_and_written_per_operator():
    x = torch.ones(1000)  # 4000 bytes
    one = torch.ones(1)
    big = torch.ones(10_000)
    counter = TrafficCounter()
    with counter:
        counter.phase = "forward"
        x * 2  # reads x, writes 1000 floats
        x.view(10, 100)  # a view: nothing moves
        one.expand(1000) + x  # the expanded operand is 4 bytes of storage
        counter.phase = "backward"
        big[:100] * 1  # the slice spans 100 floats of a 10000-float storage
        with torch.inference_mode():  # where eval-mode dropout reaches the dispatcher, and hands x back
            torch.nn.functional.dropout(x, 0.5, training=False)
        x.add_(1)  # in place: reads and writes x
    assert counter.bytes == {("forward", "mul"): 8000, ("forward", "add"): 8004, ("backward", "mul"): 800,
                             ("backward", "add_"): 8000}


def test_casts_and_copies_are_counted_under_inference_mode():
    """There the mode sees ``to``, ``reshape`` and ``contiguous`` undecomposed, with "may alias" schemas."""
    x = torch.ones(1000)  # 4000 bytes
    grid = torch.ones(10, 100).t()  # not contiguous: reshaping it to 1-D copies
    counter = TrafficCounter()
    with torch.inference_mode(), counter:
        x.to(torch.bfloat16)  # reads 4000, writes 2000
        x.to(torch.float32)  # hands x back: nothing moves
        grid.reshape(-1)  # a copy: reads and writes 4000
        grid.contiguous()
        x.reshape(10, 100)  # a view
    assert counter.bytes == {("forward", "to"): 6000, ("forward", "reshape"): 8000,
                             ("forward", "contiguous"): 8000}


def test_fused_locality_kernels_are_counted_by_their_tensors():
    import argparse

    from step_traffic import step_traffic

    import lvit.models.locality_triton as kernels

    args = argparse.Namespace(image_size=32, batch_size=2, bf16=False)
    tiny = dict(patch_size=8, embed_dim=16, depth=1, num_heads=2, se_reduction=4)
    eager, fused = (step_traffic("localvit_tiny", args, fused=f, **tiny) for f in (False, True))
    assert not any(op.startswith("triton:") for _, op in eager)
    assert ("forward", "hardswish") in eager and not any(op == "hardswish" for _, op in fused)
    # the kernels' custom ops are counted by what runs inside them, not once more as operators of their own
    assert not any("locality_middle" in op for _, op in fused)
    # The two activation passes. The first reads the expand output (2 x 16 positions x 64 channels), scale
    # and shift (64 each) and, as a stand-in for the gate it does not read, scale once more, and writes the
    # conv's input; the second reads the conv output, its scale and shift and SE's gate (2 images x 64) and
    # writes the block's output
    hidden = 2 * 16 * 64
    floats = (2 * hidden + 3 * 64) + (2 * hidden + 2 * 64 + 2 * 64)
    assert fused[("forward", "triton:_scale_shift_act_kernel")] == 4 * floats
    # The three statistics passes (over the expand output, the conv's output and the projection's 16
    # channels): each reads its tensor and writes two rows of partial sums per program
    rows = kernels._sum_grid(2 * 16, 64, kernels.TILES["sums"])[0][0]
    rows_out = kernels._sum_grid(2 * 16, 16, kernels.TILES["sums"])[0][0]
    floats = 2 * (hidden + 2 * rows * 64) + (2 * 16 * 16 + 2 * rows_out * 16)
    assert fused[("forward", "triton:_channel_sums_kernel")] == 4 * floats
    # The two input gradients of act(BN(.)). The conv output's: reads the output gradient and the conv
    # output, SE's (gate, pooled-gradient) rows (2 x 2 images x 64) and four rows of the second batch norm
    # (scale, shift, and the coefficients gb, gc), writes it. The expand output's: reads the gradient cuDNN's
    # conv backward wrote and the expand output, the gate twice as a stand-in for SE rows it does not read
    # (2 x 2 x 64) and four rows of the first batch norm
    floats = 2 * (3 * hidden + 2 * 2 * 64 + 4 * 64)
    assert fused[("backward", "triton:_act_bn_input_grad_kernel")] == 4 * floats
    # the first batch norm's sums: read that gradient, the expand output and three rows, write two rows of
    # partial sums per program (the second's come from SE's per-image pass)
    floats = 2 * hidden + 3 * 64 + 2 * rows * 64
    assert fused[("backward", "triton:_act_bn_grad_sums_kernel")] == 4 * floats
    # the batch norms' per-channel arithmetic (moments, 1/std, scale and shift, the backward's coefficients,
    # the running statistics' update) runs in two small kernels per batch norm, not as PyTorch operators on
    # (C,) vectors, each of which is a kernel launch of its own
    assert not {op for _, op in fused} & {"rsqrt", "clamp_min", "neg", "lerp_", "sub"}
    assert ("forward", "triton:_bn_stats_kernel") in fused and ("backward", "triton:_bn_grad_kernel") in fused
    # the depth-wise conv and its gradients are cuDNN's, counted as the operators they are
    assert not any(op.startswith("triton:_dw") for _, op in fused)
    # The block's ends: the patch tokens gathered (read the 2 x 17 x 16 fp32 sequence, write the image) and
    # the output written (read the sequence, the projection's output and BN's scale and shift); no cat
    sequence, image = 2 * 17 * 16, 2 * 16 * 16
    assert fused[("forward", "triton:_gather_patches_kernel")] == 4 * (sequence + image)
    assert fused[("forward", "triton:_residual_norm_kernel")] == 4 * (2 * sequence + image + 2 * 16)
    # the only forward cat left is the class token's at the embedding, as in DeiT
    deit = step_traffic("deit_tiny_patch16_224", args, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    assert fused[("forward", "cat")] == deit[("forward", "cat")] < eager[("forward", "cat")]
    assert sum(fused.values()) < sum(eager.values())


def test_group_norm_is_counted_in_fp32_under_autocast_as_cuda_runs_it():
    from step_traffic import cuda_autocast_group_norm
    from timm.layers import GroupNormAct

    from lvit.models.dpt import set_low_precision_norms

    norm = GroupNormAct(8, num_groups=2)
    x = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16)  # 256 elements, 512 bytes

    def counted(low_precision: bool, autocast: bool = True) -> tuple[torch.dtype, dict[str, int]]:
        set_low_precision_norms(norm, low_precision)
        counter = TrafficCounter()
        bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
        with cuda_autocast_group_norm(), counter, bf16:
            out = norm(x)
        return out.dtype, {op: n for (_, op), n in counter.bytes.items()}

    (default_dtype, default), (low_dtype, low) = counted(False), counted(True)
    assert default_dtype == torch.float32 and low_dtype == torch.bfloat16
    assert default["relu_"] == 2 * 256 * 4 and low["relu_"] == 2 * 256 * 2  # the ReLU after it, in place
    assert sum(default.values()) > sum(low.values()) + 2 * 256 * 2  # and the fp32 copy of the input
    assert counted(False, autocast=False)[0] == torch.bfloat16  # outside autocast: PyTorch's own group_norm


def test_a_forwards_bytes_per_image_at_a_large_batch_follow_from_two_small_ones():
    from step_traffic import forward_mb, per_image_at
    from timm.layers import GroupNormAct

    # per forward: autocast's weight casts; per image: the activations
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), GroupNormAct(32, num_groups=4),
                                torch.nn.Conv2d(32, 8, 1))
    at_1, at_2, at_8 = (forward_mb(model, batch, image_size=8, bf16=True) for batch in (1, 2, 8))
    predicted = per_image_at(8, 1, at_1, at_2)
    assert predicted.keys() == at_8.keys() and "to" in at_8
    for op, mb in at_8.items():
        assert abs(predicted[op] - mb / 8) <= 1e-9 + 1e-9 * mb, op
    assert predicted["to"] < at_1["to"]  # the weight casts, shared by the batch
