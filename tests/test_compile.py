"""Every model family traces into one graph: ``torch.compile`` compiles it whole, without graph breaks.

A graph break (a ``.item()``, a data-dependent branch, an unsupported call) splits the compiled model into
pieces that run with a Python round trip between them and cannot fuse across the cut; on the small proxy
models that costs a large share of a step. ``fullgraph=True`` turns any break into an error, and the
``eager`` backend keeps the test to dynamo's tracing (no code generation), so the compiled forward must also
equal the eager one exactly.

Dynamo leaves the autograd engine unable to run in a forked child (``test_engine_loop`` forks trainings), so
these checks run in a child pytest of their own.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from child_pytest import assert_passes_in_child

import lvit

IN_CHILD = os.environ.get("LVIT_COMPILE_TESTS") == "1"

pytestmark = pytest.mark.usefixtures("single_thread")

# Small members of each family, at input sizes that exercise the reshapes (non-square grids, resampled
# position embeddings); the tracing logic does not depend on width or depth.
MICRO_VIT = dict(embed_dim=48, depth=2, num_heads=2)
MICRO_DPT = dict(block_taps=(0, 1, 2, 3), reassemble_channels=(8, 16, 32, 32), features=16,
                 backbone_kwargs=dict(MICRO_VIT, depth=4))
FAMILIES: dict[str, tuple[str, dict[str, Any], tuple[int, int]]] = {
    "localvit": ("localvit_tiny", dict(MICRO_VIT, num_classes=5, dynamic_img_size=True), (64, 96)),
    "localvit_eca": ("localvit_tiny", dict(MICRO_VIT, num_classes=5, attn="eca", act="relu6"), (224, 224)),
    "localvit_pvt": ("localvit_pvt_tiny", dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4),
                                               depths=(1, 1, 1, 1), num_classes=3), (64, 96)),
    "localvit_tnt": ("localvit_tnt_tiny", dict(embed_dim=48, depth=2, img_size=64, num_classes=3), (64, 64)),
    "dpt_project": ("dpt_tiny", MICRO_DPT, (96, 128)),
    "dpt_add_localvit": ("dpt_localvit_tiny", dict(MICRO_DPT, readout="add"), (64, 64)),
    # ResNet-50 stages 1-2 feed the first two reassemble stages at their own widths.
    "dpt_hybrid": ("dpt_hybrid", dict(MICRO_DPT, block_taps=(0, 1), reassemble_channels=(256, 512, 32, 32),
                                      backbone_kwargs=MICRO_VIT), (64, 96)),
}

# Training compiles train mode; inference (``dpt_vs_hf.py``, evaluation) compiles DPT in eval mode.
CASES = [(family, "train") for family in sorted(FAMILIES)] + [
    (family, "eval") for family in sorted(FAMILIES) if family.startswith("dpt")
]


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_compile_checks_in_a_child_process() -> None:
    assert_passes_in_child(__file__, LVIT_COMPILE_TESTS="1")


@pytest.mark.skipif(not IN_CHILD, reason="run by test_compile_checks_in_a_child_process")
@pytest.mark.parametrize(("family", "mode"), CASES)
def test_model_compiles_without_graph_breaks(family: str, mode: str) -> None:
    name, kwargs, size = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(lvit.create_model(name, **kwargs), mode)()
    x = torch.randn(2, 3, *size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x)
    model.load_state_dict(state)  # a train-mode forward moved the BN running statistics
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)
