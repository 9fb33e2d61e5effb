"""How many instructions each fused locality kernel issues, read from its machine code: a bound on its time
that needs no GPU.

An H100 or H200 multiprocessor issues at most one warp instruction per cycle from each of its four
schedulers. So a kernel whose warps execute N warp instructions in all takes at least N / (4 x SMs x clock),
however fast its memory. This script runs LocalViT-T's locality middle (``BN, h-swish, DW3x3, BN, h-swish,
SE`` on 768 channels at 14², batch 256, bf16) forward and backward through the fused path on the CPU, with
``step_traffic.TritonKernelCounter`` standing in for the kernels, which records each launch: grid,
arguments, tiles. It then compiles every kernel for sm_90 exactly as that launch would (the same argument
types and divisibility specialisation as Triton's JIT; Triton's own ptxas), disassembles it (nvdisasm),
counts the instructions of its loop body and of the rest, and multiplies by the loop's trip count, the warps
and the programs. Beside that issue bound it sets the memory bound: the bytes of the tensors the launch is
passed over the memory bandwidth. The larger of the two is the kernel's floor. It also gives how many of the
kernel's warps a multiprocessor holds at once (registers, warp slots and shared memory permitting), which
the floors leave out: few resident warps hide memory latency badly, and how many asynchronous copies
(``LDGSTS``, Triton's software pipelining of a loop's loads) each trip of the loop issues.

Why: on an H200 at ``d0b3b1c`` the fused kernels ran far below the memory bandwidth the byte-count
prediction assumed (``RESULTS.md``); this tells which kernels are bound by the instructions they issue, and
how many each output element costs, so that kernel work can be judged on a CPU before a GPU times it.
Caveats: a warp instruction's issue is counted as one cycle (some take two, e.g. 64-bit integer multiplies
and memory instructions with many addresses); stalls and the memory latency are not modelled; a
predicated-off instruction still issues, so it is counted.

    python benchmarks/kernel_issue.py                      # H200's 132 SMs, 1.98 GHz, 4.8 TB/s; ~1 min
    python benchmarks/kernel_issue.py --tiles sums-map-wide --out /tmp/kernel_issue.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import triton
from bench_common import environment, write_json
from locality_kernels import TILE_SETS, add_middle_arguments, build_middle, count_one_call, tiles_of
from step_traffic import KernelLaunch, TrafficCounter, TritonKernelCounter
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from triton.runtime.jit import native_specialize_impl

from lvit.models.locality import fused_kernels

NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*?(\.L_x_\d+)")


def record_launches(args: argparse.Namespace) -> list[KernelLaunch]:
    """Every kernel launch of one forward and backward of the fused middle at the script's shape, then of
    the block's token ends (``lvit.models.locality_tokens_triton``)."""
    middle = count_one_call(build_middle(args, torch.device("cpu")), True, args, args.batch_size).launches
    return middle + record_token_launches(args)


def record_token_launches(args: argparse.Namespace) -> list[KernelLaunch]:
    """The token ends' launches, forward and backward, at the block's shape as the training loop runs it:
    the residual stream in fp32 with a class token, the projection's output in bf16."""
    from lvit.models.locality_tokens_triton import _residual_batch_norm, _SplitTokens

    B, side, C = args.batch_size, args.image_size, args.embed_dim
    x = torch.randn(B, 1 + side * side, C, requires_grad=True)
    y = torch.randn(B, C, side, side, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    affine = torch.rand(2, C, requires_grad=True)
    kernels = TritonKernelCounter(TrafficCounter())
    kernels.active = True
    with kernels:
        image, residual = _SplitTokens.apply(x, 1, [side, side], torch.bfloat16)
        out, _ = _residual_batch_norm(residual, y.requires_grad_(), affine, torch.zeros(2, C), 1e-5, True, 1)
        torch.autograd.grad([image, out], [x, y, affine], [torch.ones_like(image), torch.ones_like(out)])
    return kernels.launches


@functools.cache
def _kernels_by_name() -> dict[str, tuple[Any, Any]]:  # imports both kernel modules: once, not per launch
    return fused_kernels()


def kernel_of(launch: KernelLaunch) -> Any:
    return _kernels_by_name()[launch.name][1]


def specialization(launch: KernelLaunch
                   ) -> tuple[dict[str, str], dict[tuple[int], Any], dict[tuple[int], Any]]:
    """(signature, constants, attributes) that Triton's JIT derives from this launch's arguments: each
    argument's type; the constexprs, and integer arguments equal to 1; a divisibility-by-16 hint for integers
    and tensor addresses that have it."""
    kernel = kernel_of(launch)
    names = kernel.arg_names
    values = dict(zip(names, launch.args, strict=False))
    values |= {k: v for k, v in launch.meta.items() if k in names}
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(names):
        if kernel.params[index].is_constexpr:
            signature[name], constexprs[(index,)] = "constexpr", values[name]
            continue
        kind, spec = native_specialize_impl(CUDABackend, values[name], False, True, True)
        if kind == "constexpr":  # an integer argument equal to 1
            signature[name], constexprs[(index,)] = "constexpr", spec
        else:
            signature[name] = kind
            # a float (eps, a count) has no specialisation key, and so no attribute
            attrs[(index,)] = CUDABackend.parse_attr(spec) if spec is not None else []
    return signature, constexprs, attrs


def compile_as_launched(launch: KernelLaunch) -> Any:
    """The kernel compiled for sm_90 as Triton's JIT would compile it for this launch."""
    signature, constexprs, attrs = specialization(launch)
    source = ASTSource(fn=kernel_of(launch), signature=signature, constexprs=constexprs,
                       attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": launch.meta.get("num_warps", 4)})


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, bytes of spill stores) that ptxas reports for the kernel on sm_90: registers
    and warps set how many programs fit on one multiprocessor, and a spill costs memory bandwidth."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as handle:
        handle.write(ptx)
        handle.flush()
        report = subprocess.run([str(NVIDIA_BIN / "ptxas"), "-v", "--gpu-name", "sm_90a", handle.name, "-o",
                                 "/dev/null"], capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    return int(registers.group(1)), int(spills.group(1))


def disassemble(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return subprocess.run([str(NVIDIA_BIN / "nvdisasm"), "-c", handle.name], capture_output=True,
                              text=True, check=True).stdout


def instruction_counts(sass: str) -> tuple[int, list[tuple[int, collections.Counter[str]]]]:
    """(instructions in all, [(instructions of each loop body, its opcodes)]); a loop is the stretch from a
    label back to a branch that jumps to it."""
    instructions: list[tuple[int, str]] = []
    label_at: dict[str, int] = {}
    pending: list[str] = []
    for line in sass.splitlines():
        if label := _LABEL.match(line):
            pending.append(label.group(1))
        elif found := _INSTRUCTION.search(line):
            address = int(found.group(1), 16)
            instructions.append((address, found.group(2)))
            label_at.update((name, address) for name in pending)
            pending = []
    loops = []
    for address, text in instructions:
        branch = _BRANCH.search(text)
        if branch and label_at.get(branch.group(1), address) < address:
            body = [t for a, t in instructions if label_at[branch.group(1)] <= a <= address]
            opcodes = collections.Counter(re.sub(r"^@!?U?P[T\d]+\s+", "", t).split()[0].split(".")[0]
                                          for t in body)
            loops.append((len(body), opcodes))
    return len(instructions), loops


# SE's excitation kernels: a program takes a block of images and loops over the channels, except this one,
# which takes a block of channels and loops over the images
LOOPS_OVER_IMAGES = frozenset({"_se_param_grad_kernel"})


def rows_per_step(launch: KernelLaunch) -> int:
    """Rows of a step of the kernel's loop: positions (``BLOCK_P``), rows of partial sums in the two kernels
    that finish a batch norm's statistics (``BLOCK_R``), or images in SE's excitation kernels
    (``BLOCK_B``)."""
    meta = launch.meta
    return meta.get("BLOCK_P") or meta.get("BLOCK_B") or meta["BLOCK_R"]  # SE's kernels have a BLOCK_R too


def trips(launch: KernelLaunch) -> int:
    """Iterations of the kernel's loop: its ``BLOCKS`` position blocks, an image's positions, the rows of
    partial sums it adds up, or SE's channel or image blocks. The finishing and SE kernels loop twice or
    three times, counted here as once: their instruction counts are lower bounds."""
    values = dict(zip(kernel_of(launch).arg_names, launch.args, strict=False))
    meta = launch.meta
    if "BLOCKS" in values:
        return values["BLOCKS"]
    if "BLOCK_P" in meta:
        return triton.cdiv(values["HW"], meta["BLOCK_P"])
    if "BLOCK_B" in meta:
        if launch.name in LOOPS_OVER_IMAGES:
            return triton.cdiv(values["B"], meta["BLOCK_B"])
        return triton.cdiv(values["C"], meta["BLOCK_C"])
    return triton.cdiv(values["ROWS"], meta["BLOCK_R"])


# Hopper's per-multiprocessor limits: 64 K registers (allotted per warp in units of 256), 64 resident warps,
# 32 resident programs, 227 KB of shared memory a program may use.
SM_REGISTERS, SM_WARPS, SM_PROGRAMS, SM_SHARED = 65536, 64, 32, 227 * 1024


def resident_warps(registers: int, warps: int, shared: int) -> int:
    """Warps of this kernel that one multiprocessor holds at once: what hides memory latency. A program
    needs all its warps resident, so registers, warp slots and shared memory each cap the programs."""
    per_warp = -(-registers * 32 // 256) * 256
    programs = min(SM_REGISTERS // (per_warp * warps), SM_WARPS // warps, SM_PROGRAMS,
                   SM_SHARED // shared if shared else SM_PROGRAMS)
    return programs * warps


def analyse(launch: KernelLaunch, args: argparse.Namespace) -> dict[str, Any]:
    compiled = compile_as_launched(launch)
    total, loops = instruction_counts(disassemble(compiled.asm["cubin"]))
    # Each kernel has one loop, over position blocks. Where LLVM unrolled it, the machine code has a main loop
    # doing several iterations per pass and a remainder loop doing one: the remainder's body is then the cost
    # of one iteration (at most a few instructions more than the unrolled share).
    body, opcodes = min(loops, key=lambda loop: loop[0]) if loops else (0, collections.Counter())
    iterations = trips(launch) if loops else 1
    per_program = total - sum(size for size, _ in loops) + iterations * body
    programs, warps = math.prod(launch.grid), launch.meta["num_warps"]
    elements = rows_per_step(launch) * launch.meta["BLOCK_C"] * iterations * programs
    warp_instructions = programs * warps * per_program
    registers = ptxas_usage(compiled.asm["ptx"])[0]
    return dict(
        kernel=launch.name, grid=launch.grid, tiles=(rows_per_step(launch), launch.meta["BLOCK_C"], warps),
        registers=registers, resident_warps=resident_warps(registers, warps, compiled.metadata.shared),
        loop_body=body, trips=iterations, async_loads=opcodes["LDGSTS"],
        instructions_per_element=warp_instructions * 32 / elements,
        issue_us=warp_instructions / (4 * args.sms * args.clock_ghz * 1e3),
        memory_us=launch.nbytes / (args.bandwidth_tb_s * 1e6),
        loop_opcodes=dict(opcodes.most_common(12)),
    )


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"### Issue and memory bounds of the fused locality kernels ({env['date'][:10]})", "",
        f"lvit {env['lvit']} at {env['git_sha'][:7]}{' (dirty)' if env['dirty'] else ''}; Triton "
        f"{triton.__version__}, sm_90; batch {args.batch_size}, {4 * args.embed_dim} channels at "
        f"{args.image_size}², h-swish{f' + SE-{args.se_reduction}' if args.attn == 'se' else ''}, bf16; "
        f"tiles {args.tiles or 'default'}; {args.sms} SMs at {args.clock_ghz} GHz, "
        f"{args.bandwidth_tb_s} TB/s", "",
        "| kernel | tiles (P, C, warps) | registers | resident warps / SM | loop body | async loads | trips "
        "| instructions / element | issue µs | memory µs | floor µs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| `{r['kernel']}` | {r['tiles']} | {r['registers']} | {r['resident_warps']} "
                     f"| {r['loop_body']} | {r['async_loads']} | {r['trips']} "
                     f"| {r['instructions_per_element']:.1f} | {r['issue_us']:.1f} | {r['memory_us']:.1f} "
                     f"| {max(r['issue_us'], r['memory_us']):.1f} |")
    issue = sum(r["issue_us"] for r in rows)
    floor = sum(max(r["issue_us"], r["memory_us"]) for r in rows)
    lines += ["", f"Sum over one forward and backward: issue {issue:.0f} µs, memory "
              f"{sum(r['memory_us'] for r in rows):.0f} µs, floor {floor:.0f} µs."]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_middle_arguments(parser)
    parser.add_argument("--tiles", choices=list(TILE_SETS), help="a tile set of locality_kernels.py")
    parser.add_argument("--sms", type=int, default=132, help="multiprocessors (H100 SXM and H200: 132)")
    parser.add_argument("--clock-ghz", type=float, default=1.98, help="SM clock (H200: 1.98 at most)")
    parser.add_argument("--bandwidth-tb-s", type=float, default=4.8, help="memory bandwidth (H100: 3.35)")
    parser.add_argument("--out", help="write the rows as JSON to this path")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    env = environment("cpu", precision="bf16 (compiled for sm_90, not run)")
    with tiles_of(args.tiles) if args.tiles else contextlib.nullcontext():
        launches = record_launches(args)
    rows = [analyse(launch, args) for launch in launches]
    print(markdown(rows, env, args))
    write_json(args.out, "kernel_issue", env, args, started, rows=rows)


if __name__ == "__main__":
    main()
