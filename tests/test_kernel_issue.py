"""benchmarks/kernel_issue.py reads how many instructions a Triton kernel issues from its machine code, as
Triton's JIT would compile it for a launch."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kernel_issue import instruction_counts, specialization, trips  # noqa: E402
from step_traffic import KernelLaunch  # noqa: E402

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
.L_x_0:
        /*0020*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0030*/                   FFMA R3, R3, R4, R5 ;
        /*0040*/                   ISETP.GE.AND P0, PT, R2, R6, PT ;
        /*0050*/              @!P0 BRA `(.L_x_0) ;
        /*0060*/               @P1 BRA `(.L_x_1) ;
        /*0070*/                   STG.E desc[UR4][R8.64], R3 ;
.L_x_1:
        /*0080*/                   EXIT ;
"""


def test_a_loop_runs_from_a_label_back_to_the_branch_that_jumps_to_it() -> None:
    total, loops = instruction_counts(SASS)
    assert total == 9
    assert [(size, dict(opcodes)) for size, opcodes in loops] == [
        (4, {"IADD3": 1, "FFMA": 1, "ISETP": 1, "BRA": 1})]  # the forward branch to .L_x_1 is no loop


def _launch(name: str, args: tuple, **meta: int) -> KernelLaunch:
    return KernelLaunch(name, (1, 1), args, meta, 0)


def test_a_launch_is_specialised_as_the_jit_specialises_it() -> None:
    x = torch.zeros(16, 64, dtype=torch.bfloat16)
    sums = torch.zeros(1, 64)
    launch = _launch("_channel_sums_kernel", (x, sums, sums, 16 * 48, 70, 1), BLOCK_P=16, BLOCK_C=64,
                     STAGES=3, num_warps=4)
    signature, constants, attrs = specialization(launch)
    assert signature == dict(x_ptr="*bf16", sum_ptr="*fp32", sq_ptr="*fp32", P="i32", C="i32",
                             BLOCKS="constexpr", BLOCK_P="constexpr", BLOCK_C="constexpr", STAGES="constexpr")
    # BLOCKS = 1 becomes a constant, as in the JIT
    assert constants == {(5,): 1, (6,): 16, (7,): 64, (8,): 3}
    divisible = [["tt.divisibility", 16]]
    assert attrs == {(0,): divisible, (1,): divisible, (2,): divisible, (3,): divisible, (4,): []}  # C = 70


def test_trips_are_the_position_blocks_of_a_program_or_of_an_image() -> None:
    x = torch.zeros(1)
    assert trips(_launch("_channel_sums_kernel", (x, x, x, 800, 64, 7), BLOCK_P=16)) == 7
    # the per-image kernels walk an image's 196 positions 16 at a time
    assert trips(_launch("_image_pool_kernel", (x, x, x, x, 196, 64), BLOCK_P=16)) == 13
    # a batch norm's finishing kernel adds up 126 rows of partial sums 32 at a time
    assert trips(_launch("_bn_stats_kernel", (x, x, 126), BLOCK_R=32, BLOCK_C=64)) == 4
    # SE's excitation: a block of images walks 768 channels 64 at a time; the parameter gradients' block of
    # channels walks 256 images 16 at a time (both kernels also have a BLOCK_R, their hidden size)
    se = dict(BLOCK_B=16, BLOCK_C=64, BLOCK_R=16)
    assert trips(_launch("_se_excite_kernel", (x,) * 7 + (256, 768, 4), **se)) == 12
    assert trips(_launch("_se_param_grad_kernel", (x,) * 12 + (256, 768, 4), **se)) == 16


def test_resident_warps_follow_the_scarcest_of_registers_warp_slots_and_shared_memory() -> None:
    from kernel_issue import resident_warps

    # 252 registers a thread round to 8064 a warp: one 8-warp program fits the 64 K (d0b3b1c's backward)
    assert resident_warps(252, 8, 0) == 8
    assert resident_warps(64, 8, 0) == 32  # four programs by registers
    assert resident_warps(32, 4, 0) == 64  # sixteen by registers, and the 64 warp slots are full
    assert resident_warps(32, 4, 100 * 1024) == 8  # two programs of 100 KB shared memory
    assert resident_warps(41, 4, 0) == 40  # 41 registers are allotted as 48: ten programs, not twelve
