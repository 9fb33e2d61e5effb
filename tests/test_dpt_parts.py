"""benchmarks/dpt_parts.py times each part of a DPT forward by replaying the calls it recorded: a replay must
be the forward's own work, and the parts must cover the model."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import lvit
from lvit.complexity import count_macs, count_macs_by_part

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dpt_parts import PARTS, lvit_parts, record_calls, replay_max_abs_diff, rows  # noqa: E402


@pytest.fixture(scope="module")
def hybrid() -> nn.Module:
    torch.manual_seed(0)
    return lvit.create_model("dpt_hybrid", task="depth", readout="project").eval()


def test_replaying_each_part_gives_the_outputs_of_the_forward(hybrid: nn.Module) -> None:
    parts = lvit_parts(hybrid)
    with torch.inference_mode():
        recording = record_calls(hybrid, parts, torch.randn(2, 3, 64, 64))
        for part in PARTS:
            assert replay_max_abs_diff(recording, part) == 0.0, part
    resnet = hybrid.backbone.patch_embed.backbone
    calls = {part: len(recording.calls[part]) for part in PARTS}
    # stem, each stage, the ResNet's norm, the patch projection; every block; two Reads for the two token
    # taps (the ResNet taps have none) and four feature convs; four fusion blocks; the head
    assert calls == dict(embedding=1 + len(resnet.stages) + 2, transformer=12, reassemble=2 + 4, fusion=4,
                         head=1)


def test_a_replay_that_does_other_work_is_caught(hybrid: nn.Module) -> None:
    with torch.inference_mode():
        recording = record_calls(hybrid, lvit_parts(hybrid), torch.randn(2, 3, 64, 64))
        recording.calls["fusion"][1].args = tuple(a * 2 for a in recording.calls["fusion"][1].args)
        assert replay_max_abs_diff(recording, "fusion") > 0
        assert replay_max_abs_diff(recording, "head") == 0.0


def test_parts_hold_every_trained_parameter_and_their_macs_split_the_count(hybrid: nn.Module) -> None:
    parts = lvit_parts(hybrid)
    in_parts = {id(p) for modules in parts.values() for m in modules for p in m.parameters()}
    outside = [name for name, p in hybrid.named_parameters() if id(p) not in in_parts and p.requires_grad]
    assert outside == ["backbone.cls_token", "backbone.pos_embed"]  # added to the tokens between the parts
    macs = count_macs_by_part(hybrid, (3, 64, 64), parts=parts)
    assert set(macs) == set(PARTS)  # nothing counted outside the parts
    assert sum(macs.values()) == count_macs(hybrid, (3, 64, 64))
    assert macs["head"] == count_macs(hybrid.head, (hybrid.head[0].in_channels, 32, 32))


def test_a_listed_module_inside_another_is_refused() -> None:
    inner = nn.Linear(3, 3)
    model = nn.Sequential(inner, nn.ReLU())
    with pytest.raises(ValueError, match="Linear runs inside Sequential"):
        record_calls(model, dict(outer=[model], inner=[inner]), torch.ones(1, 3))


def test_rows_rate_and_what_lies_outside_the_parts() -> None:
    ms = {f"{key}/{part}": 1.0 for key in ("lvit", "hf") for part in PARTS}
    ms |= {"lvit/whole": 6.0, "hf/whole": 10.0, "hf/head": 3.0}
    result = dict(ms_per_batch=ms, lvit_gmacs_per_image={part: 0.5 for part in PARTS},
                  lvit_gmacs_outside_parts=0.0)
    table = {r["part"]: r for r in rows(result, batch_size=1000)}
    assert table["head"]["lvit_tflop_s"] == pytest.approx(1000.0)  # 2 x 0.5 GFLOP x 1000 images in 1 ms
    assert table["head"]["ratio"] == pytest.approx(3.0)
    assert table["sum of parts"]["hf_ms"] == pytest.approx(7.0)
    assert table["outside the parts"]["lvit_ms"] == pytest.approx(1.0)
    assert table["outside the parts"]["hf_ms"] == pytest.approx(3.0)
    assert table["whole forward"]["lvit_tflop_s"] == pytest.approx(2 * 2.5 * 1000 / 6.0)
