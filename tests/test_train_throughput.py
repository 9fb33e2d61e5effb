"""train_throughput.py times each LocalViT mode against DeiT-T in the same mode without the fused kernels."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_throughput import MODES, baseline_mode  # noqa: E402


def test_each_fused_mode_is_compared_with_deit_in_the_same_mode_without_kernels() -> None:
    assert baseline_mode("fused") == "eager"
    assert baseline_mode("graphed-fused") == "graphed"
    assert baseline_mode("compiled-graphed-fused") == "compiled-graphed"
    for mode in MODES:
        # DeiT-T has no locality feed-forward: its mode never names the kernels, and is a mode of its own
        assert "fused" not in baseline_mode(mode) and baseline_mode(mode) in MODES
        assert baseline_mode(mode) == mode or mode.endswith("fused")
