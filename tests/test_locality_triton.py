"""The fused Triton locality path equals the eager modules: outputs, every gradient, batch-norm state.

On a GPU the kernels run compiled. Without one they run in Triton's interpreter, which has to be chosen
before triton is first imported (``TRITON_INTERPRET=1``; timm imports triton): so there the kernel tests run
in a child pytest started with it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from child_pytest import assert_passes_in_child

import lvit
import lvit.models.locality_triton as fused
from lvit.models.locality import LocalityFeedForward, fused_kernels, fused_locality, set_fused_locality

ON_GPU = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
needs_kernels = pytest.mark.skipif(not (ON_GPU or INTERPRETED), reason="run in the interpreter by the test "
                                   "test_kernels_in_the_interpreter")


@pytest.fixture(autouse=True)
def exact_fp32_convolutions() -> None:
    """cuDNN may run fp32 convolutions in TF32 (10-bit mantissa); the reference must be plain fp32."""
    allowed = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allowed


@pytest.mark.skipif(ON_GPU or INTERPRETED, reason="the kernels run in this process")
def test_kernels_in_the_interpreter() -> None:
    assert_passes_in_child(__file__, TRITON_INTERPRET="1")


def _randomise_batch_norms(module: nn.Module) -> None:
    """Away from the (1, 0) / (0, 1) defaults, so a swapped or dropped term shows."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)


def _assert_same_state_and_grads(ours: nn.Module, reference: nn.Module) -> None:
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    for (name, b), c in zip(ours.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


# Other tiles than the defaults, as benchmarks/locality_kernels.py --tiles may time them: every tile size
# must give the same result (narrower channel blocks, fewer positions, other warp counts).
OTHER_TILES = {"sums": fused.Tiles(32, 32, 2, stages=1), "per_image": fused.Tiles(8, 32, 2, stages=2),
               "map": fused.Tiles(16, 32, 2)}


@needs_kernels
@pytest.mark.parametrize(("act", "attn", "training", "tiles"), [
    ("hswish", "se", True, fused.TILES), ("hswish", "se", False, fused.TILES),
    ("relu6", "none", True, fused.TILES), ("relu6", "none", False, fused.TILES),
    ("hswish", "none", True, fused.TILES), ("hswish", "none", False, fused.TILES),
    ("hswish", "se", True, OTHER_TILES)], ids=lambda v: "other-tiles" if v is OTHER_TILES else None)
def test_middle_equals_the_eager_modules(act: str, attn: str, training: bool, tiles: dict[str, fused.Tiles],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Two programs per channel block, so the kernels' loops over several position blocks run (on a GPU
    # that is the usual case: 128 programs for 50k positions). 35 positions per image: blocks of positions
    # straddle images, which the SE gate (one per image) must follow.
    monkeypatch.setattr(fused, "SUM_PROGRAMS", 2)
    monkeypatch.setattr(fused, "TILES", tiles)
    torch.manual_seed(0)
    ffn = LocalityFeedForward(40, 2.0, act=act, attn=attn, se_reduction=4).to(DEVICE).train(training)
    _randomise_batch_norms(ffn)  # 80 hidden channels: a full and a partial channel block
    middle = ffn.conv[1:7] if attn == "se" else ffn.conv[1:6]
    reference = copy.deepcopy(middle)
    h = (torch.randn(3, 80, 5, 7, device=DEVICE) * 2 + 0.3).contiguous(memory_format=torch.channels_last)
    h_ours, h_ref = h.clone().requires_grad_(), h.clone().requires_grad_()
    grad = torch.randn_like(h)
    bn1, _, dw, bn2, _, *se = middle
    out = fused.locality_middle(h_ours, bn1, dw, bn2, act, *se)
    out.backward(grad)
    expected = reference(h_ref)
    expected.backward(grad)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_ours.grad, h_ref.grad, rtol=1e-4, atol=1e-5)
    _assert_same_state_and_grads(middle, reference)


def _fused_localvit_and_reference() -> tuple[nn.Module, nn.Module]:
    """A 2-block LocalViT (48x48, 5 classes) with random batch-norm state, switched to the fused kernels,
    and an eager copy of it made before the switch."""
    torch.manual_seed(0)
    model = lvit.create_model("localvit_tiny", img_size=48, patch_size=8, embed_dim=24, depth=2, num_heads=2,
                              se_reduction=4, num_classes=5).to(DEVICE)
    _randomise_batch_norms(model)
    reference = copy.deepcopy(model)
    assert set_fused_locality(model) == 2
    return model, reference


@needs_kernels
def test_fused_localvit_trains_like_the_eager_one() -> None:
    model, reference = _fused_localvit_and_reference()
    images = torch.randn(4, 3, 48, 48, device=DEVICE)
    labels = torch.tensor([0, 1, 2, 3], device=DEVICE)
    for net in (model, reference):
        nn.functional.cross_entropy(net(images), labels).backward()
    _assert_same_state_and_grads(model, reference)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), reference.eval()(images), rtol=1e-4, atol=1e-5)


def test_only_stride_one_depthwise_feed_forwards_are_switched() -> None:
    model = nn.Sequential(LocalityFeedForward(8, dw=False), LocalityFeedForward(8),
                          LocalityFeedForward(8, stride=2))
    assert set_fused_locality(model) == 1
    assert [m.fused for m in model] == [False, True, False]
    assert set_fused_locality(model, enabled=False) == 1 and not model[1].fused


def test_fused_locality_switches_the_kernels_on_within_its_block_only() -> None:
    model = nn.Sequential(LocalityFeedForward(8), LocalityFeedForward(8), LocalityFeedForward(8, dw=False))
    model[1].fused = True  # switched on before the block: stays on after it
    with fused_locality(model) as switched:
        assert switched == 2 and [m.fused for m in model] == [True, True, False]
    assert [m.fused for m in model] == [False, True, False]
    with pytest.raises(RuntimeError, match="capture failed"), fused_locality(model):
        raise RuntimeError("capture failed")
    assert [m.fused for m in model] == [False, True, False]


@pytest.mark.skipif(INTERPRETED or ON_GPU, reason="the interpreter's kernels cannot be compiled; on a GPU "
                    "the other tests compile them for real, and its time is dearer than a CPU's")
def test_kernels_compile_for_hopper_without_spilling_registers() -> None:
    """A kernel that spills registers to local memory loses much of its bandwidth; the tile sizes and warp
    counts are chosen so that none does, and so are the alternatives that benchmarks/locality_kernels.py
    times. Each kernel is compiled for sm_90 (Triton's ptxas; no GPU) exactly as the fused middle launches it
    at LocalViT-T's training shape, with LocalViT-T's SE, the table rows' widest SE and none
    (benchmarks/kernel_issue.py records the launches and specialises them as Triton's JIT does)."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from kernel_issue import compile_as_launched, ptxas_usage, record_launches, specialization
    from locality_kernels import TILE_SETS, tiles_of

    checked: set[str] = set()  # launches compiled, as (kernel, tiles, specialisation)
    kernels: set[str] = set()
    # LocalViT-T's SE-192 (hidden 4) with every tile set; SE-4 (hidden 192, the largest of the table rows) and
    # no SE with the default tiles
    for attn, reduction, tile_sets in (("se", 192, list(TILE_SETS)), ("se", 4, ["default"]),
                                       ("none", 4, ["default"])):
        args = argparse.Namespace(batch_size=256, embed_dim=192, image_size=14, attn=attn,
                                  se_reduction=reduction)
        for tiles in tile_sets:
            with tiles_of(tiles):
                launches = record_launches(args)
            for launch in launches:
                key = repr((launch.name, launch.meta, specialization(launch)))
                if key not in checked:
                    registers, spilled = ptxas_usage(compile_as_launched(launch).asm["ptx"])
                    assert spilled == 0, f"{launch.name} with {launch.meta} spills ({registers} registers)"
                    checked.add(key)
                    kernels.add(launch.name)
    assert kernels == set(fused_kernels())  # every kernel checked


@needs_kernels
def test_compile_traces_the_fused_kernels_into_one_graph() -> None:
    """The kernels are custom ops: dynamo keeps them in its graph (no graph break), AOTAutograd traces their
    fake shapes and autograd formula, and the compiled step updates the same gradients and batch-norm state
    as the eager modules."""
    model, reference = _fused_localvit_and_reference()
    graphs = []
    after_dynamo = torch._dynamo.lookup_backend("inductor" if ON_GPU else "aot_eager")

    def recording_backend(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> object:
        graphs.append(graph)
        return after_dynamo(graph, example_inputs)

    images = torch.randn(4, 3, 48, 48, device=DEVICE)
    torch._dynamo.reset()
    torch.compile(model, backend=recording_backend)(images).sum().backward()
    reference(images).sum().backward()
    assert len(graphs) == 1, f"{len(graphs)} graphs: the fused feed-forward broke the graph"
    ops = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert ops.count(torch.ops.lvit.locality_middle.default) == 2
    _assert_same_state_and_grads(model, reference)


@needs_kernels
@pytest.mark.parametrize("attn", ["se", "none"])
def test_custom_ops_pass_torch_library_opcheck(attn: str) -> None:
    """Schema, fake shapes and strides, autograd registration and AOT dispatch, as torch checks them."""
    torch.manual_seed(0)
    ffn = LocalityFeedForward(16, 2.0, attn=attn, se_reduction=4).to(DEVICE)
    h = torch.randn(2, 32, 4, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    bn1, _, dw, bn2, _, *se = ffn.conv[1:7]
    se_params = [p.detach() for p in se[0].parameters()] if attn == "se" else []
    weight, affine = dw.weight.detach(), torch.rand(4, 32, device=DEVICE) + 0.5
    settings = ([1e-5, 1e-5], [True, False], 1)  # eps, batch statistics?, act
    args = (h.requires_grad_(), weight.requires_grad_(), affine, affine.clone(), *settings, se_params)
    torch.library.opcheck(torch.ops.lvit.locality_middle.default, args)
    _, dw_input, conv, stats, pooled, gate, hidden = torch.ops.lvit.locality_middle(*args)
    backward_args = (torch.randn_like(h), h.detach(), dw_input, conv, weight.detach(), stats, pooled, gate,
                     hidden, *settings[1:], se_params)
    torch.library.opcheck(torch.ops.lvit.locality_middle_backward.default, backward_args)


@needs_kernels
@pytest.mark.parametrize(("prefix", "grid", "training"), [(1, (4, 5), True), (0, (3, 3), True),
                                                          (2, (4, 5), False)])
def test_block_tokens_equal_the_split_feed_forward_and_cat(prefix: int, grid: tuple[int, int],
                                                           training: bool) -> None:
    """The fused block's ends (lvit.models.locality_tokens_triton) against the eager split, feed-forward and
    cat: output, the sequence's gradient (the residual's and the conv path's, joined), every parameter's
    gradient and the batch norms' state, with and without prefix tokens, on a non-square grid."""
    from lvit.models.locality import apply_to_patch_tokens

    torch.manual_seed(0)
    ffn = LocalityFeedForward(40, 2.0, se_reduction=4).to(DEVICE).train(training)
    _randomise_batch_norms(ffn)
    reference = copy.deepcopy(ffn)
    assert set_fused_locality(ffn) == 1
    x = torch.randn(3, prefix + grid[0] * grid[1], 40, device=DEVICE) * 2 + 0.3
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn_like(x)
    out = ffn.forward_tokens(x_ours, prefix, grid)
    out.backward(grad)
    expected = apply_to_patch_tokens(reference, x_ref, prefix, grid)
    expected.backward(grad)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    _assert_same_state_and_grads(ffn, reference)


@needs_kernels
def test_token_ops_pass_torch_library_opcheck() -> None:
    import lvit.models.locality_tokens_triton as tokens

    torch.manual_seed(0)
    x = torch.randn(2, 1 + 12, 16, device=DEVICE, requires_grad=True)
    # no autograd formula of its own: it runs inside _SplitTokens, whose backward is the next op
    torch.library.opcheck(torch.ops.lvit.gather_patches.default, (x.detach(), 1, [3, 4], torch.float32))
    image = torch.randn(2, 16, 3, 4, device=DEVICE).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.lvit.scatter_add_patches.default, (torch.randn_like(x), image, 1))
    affine, running = torch.rand(2, 16, device=DEVICE) + 0.5, torch.rand(2, 16, device=DEVICE) + 0.5
    for batch in (True, False):
        args = (x, image.clone().requires_grad_(), affine.requires_grad_(), running, 1e-5, batch, 1)
        torch.library.opcheck(torch.ops.lvit.residual_batch_norm.default, args)
        _, stats = tokens._residual_batch_norm(*args)
        backward_args = (torch.randn_like(x), image, stats, batch, 1)
        torch.library.opcheck(torch.ops.lvit.residual_batch_norm_backward.default, backward_args)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replays_the_fused_step() -> None:
    """The training loop's CUDA-graph step (lvit.engine.graphed) captures the fused kernels: replays on new
    batches give the eager modules' gradients and batch-norm state, step after step."""
    from lvit.engine.graphed import capture_step

    model, reference = _fused_localvit_and_reference()
    loss_fn = nn.CrossEntropyLoss()
    batches = [(torch.randn(4, 3, 48, 48, device=DEVICE), torch.randint(0, 5, (4,), device=DEVICE))
               for _ in range(3)]
    graphed = capture_step(model, loss_fn, *batches[0], contextlib.nullcontext)
    assert graphed is not None, "capture failed: see the warning"
    for images, labels in batches:
        graphed(images, labels)
        reference.zero_grad(set_to_none=True)
        loss_fn(reference(images), labels).backward()
        _assert_same_state_and_grads(model, reference)
