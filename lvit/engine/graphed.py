"""A training micro-step (forward, loss, backward) captured once as a CUDA graph and replayed every step.

Why: at proxy size (64 tokens of width 192, batch 256) a LocalViT-T step is a few milliseconds of GPU work
behind ~2,700 kernel launches, so eager steps are bound by the host issuing launches, and a dozen notebooks
sharing one GPU mostly wait on each other's launch gaps. A replayed graph issues the whole step at once.

What stays eager, and why: batch preparation (Mixup/CutMix and random erasing draw their parameters on the
host), the optimizer and its schedule (the LR is a python float that timm's schedulers overwrite each step;
a graph would freeze it), and the loss bookkeeping. Gradients live in the graph's memory and are
*overwritten* by each replay, so the loop must not ``zero_grad`` between graphed steps.

Capture needs a few eager warm-up passes (lazy initialisation, cuBLAS workspaces, cuDNN autotuning). They
run on the first batch and would move BatchNorm statistics, so every buffer is restored afterwards: a graphed
run starts from exactly the state an eager run starts from.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from lvit.models.locality import fused_locality

_WARMUP_PASSES = 3

LossFn = Callable[[Any, Any], torch.Tensor]


def _clone_tree(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone(memory_format=torch.preserve_format)
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone_tree(v) for v in value)
    return value


def _copy_tree(static: Any, value: Any, where: str = "batch") -> None:
    """Copy ``value`` into the graph's input tensors; a changed shape or structure would replay garbage."""
    if isinstance(static, torch.Tensor):
        if not isinstance(value, torch.Tensor) or value.shape != static.shape or value.dtype != static.dtype:
            got = (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(
                f"graphed step: {where} changed from {(tuple(static.shape), static.dtype)} to {got}; "
                "a CUDA graph replays fixed shapes (drop the last partial batch, or set cuda_graph=False)"
            )
        static.copy_(value, non_blocking=True)
    elif isinstance(static, dict):
        for key in static:
            _copy_tree(static[key], value[key], f"{where}[{key!r}]")
    elif isinstance(static, list | tuple):
        for i, (s, v) in enumerate(zip(static, value, strict=True)):
            _copy_tree(s, v, f"{where}[{i}]")


def capture_graph(
    call: Callable[[], None], device: torch.device, warm_up: Callable[[], None] | None = None
) -> torch.cuda.CUDAGraph:
    """``call``'s kernels captured as a CUDA graph, after :data:`_WARMUP_PASSES` passes of ``warm_up``
    (default: ``call``) on a side stream, which do what capture forbids: lazy initialisation, cuBLAS
    workspaces, cuDNN autotuning, Triton's compiles. The graph's ``replay()`` reruns the captured kernels."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(_WARMUP_PASSES):
            (warm_up or call)()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph


class GraphedStep:
    """``step(inputs, targets) -> loss``: one captured forward + loss + backward, replayed.

    ``fuse_locality``: capture LocalViT's feed-forwards as their fused Triton kernels
    (:func:`lvit.models.locality.fused_locality`); ``fused_modules`` says how many feed-forwards the step
    runs fused (0 for a model without them). Build it with :func:`capture_step`, which falls back to eager
    (returns ``None``) when capture fails.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any, autocast: Callable,
        fuse_locality: bool = False,
    ) -> None:
        self.inputs, self.targets = _clone_tree(inputs), _clone_tree(targets)

        def forward_backward() -> torch.Tensor:
            with autocast():
                loss = loss_fn(model(self.inputs), self.targets)
            loss.backward()
            return loss

        def warm_up() -> None:
            forward_backward()  # its tensors are freed here, not while capturing
            # Grads must be unset at capture so the graph writes them (set) rather than accumulating.
            model.zero_grad(set_to_none=True)

        def capture() -> None:
            self.loss = forward_backward()

        saved_buffers = [b.detach().clone() for b in model.buffers()]
        fused = fused_locality(model) if fuse_locality else contextlib.nullcontext(0)
        try:
            model.zero_grad(set_to_none=True)
            with fused as self.fused_modules:
                self.graph = capture_graph(capture, next(model.parameters()).device, warm_up)
        finally:
            with torch.no_grad():
                for live, saved in zip(model.buffers(), saved_buffers, strict=True):
                    live.copy_(saved)

    def __call__(self, inputs: Any, targets: Any) -> torch.Tensor:
        _copy_tree(self.inputs, inputs, "inputs")
        _copy_tree(self.targets, targets, "targets")
        self.graph.replay()
        return self.loss


def capture_step(
    model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any, autocast: Callable,
    fuse_locality: bool = False,
) -> GraphedStep | None:
    """Capture the training step on the first batch; on failure warn, leave the model as it was, and return
    ``None`` so the caller trains eagerly (the same arithmetic, only slower).

    ``fuse_locality`` (see :class:`GraphedStep`): the fused kernels only pay inside a graph (they cut a
    LocalViT-T step's kernel time by a third, but without a graph their host-side work costs more than that).
    """
    try:
        return GraphedStep(model, loss_fn, inputs, targets, autocast, fuse_locality)
    except RuntimeError as error:  # e.g. an op that syncs with the host, which capture forbids
        model.zero_grad(set_to_none=True)
        with contextlib.suppress(RuntimeError):
            torch.cuda.synchronize()
        warnings.warn(f"CUDA-graph capture of the training step failed, training eagerly: {error}",
                      RuntimeWarning, stacklevel=2)
        return None


__all__ = ["GraphedStep", "capture_graph", "capture_step"]
