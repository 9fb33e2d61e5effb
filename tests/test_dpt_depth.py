"""``lvit.predict_depth`` (the official inference pipeline) and ``lvit depth``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from test_dpt import MICRO_DPT

import lvit
from lvit.cli import _COMMAND_MODULES
from lvit.depth import inference_size, register_cli, to_uint16


@pytest.mark.parametrize(("height", "width", "expected"), [
    (480, 640, (384, 512)),  # scales 0.8 (H) vs 0.6 (W): 0.8 is closer to 1, 640 * 0.8 = 512
    (384, 384, (384, 384)),
    (1000, 200, (384, 64)),  # scale 0.384 (|1 - 1.92| is larger); 200 * 0.384 = 76.8 -> nearest multiple 64
    (200, 300, (256, 384)),  # scale 1.28 (H: |1 - 1.92| is larger); 200 * 1.28 = 256
    (100, 1000, (32, 384)),  # 100 * 0.384 = 38.4 -> 32 (nearest multiple, never below 32)
])
def test_inference_size_follows_official_minimal_rule(height: int, width: int, expected: tuple) -> None:
    assert inference_size(height, width) == expected


class ChannelMean(nn.Module):
    """Stub depth model: returns the mean over colour channels, so the pipeline's maths is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x.mean(dim=1)


def test_predict_depth_normalises_resizes_and_restores_size() -> None:
    image = np.zeros((60, 90, 3), dtype=np.uint8)
    image[:, :45] = 255  # left half white, right half black
    model = ChannelMean()
    depth = lvit.predict_depth(model, image)
    # 60x90: scale 6.4 (H) vs 4.27 (W) -> 4.27: 256 x 384.
    assert model.seen == [(1, 3, 256, 384)]
    assert depth.shape == (60, 90)
    # mean = std = 0.5 maps white to +1 and black to -1; away from the edge the round trip keeps that.
    np.testing.assert_allclose(depth[:, :40], 1.0, atol=1e-3)
    np.testing.assert_allclose(depth[:, 50:], -1.0, atol=1e-3)


def test_predict_depth_reads_paths_and_rejects_bad_arrays(tmp_path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 64, 3), 128, dtype=np.uint8)).save(path)
    depth = lvit.predict_depth(ChannelMean(), path)
    assert depth.shape == (32, 64)
    np.testing.assert_allclose(depth, (128 / 255 - 0.5) / 0.5, atol=1e-5)
    with pytest.raises(ValueError, match="RGB image"):
        lvit.predict_depth(ChannelMean(), np.zeros((4, 4, 4), dtype=np.uint8))


def test_to_uint16_is_min_max_normalised() -> None:
    out = to_uint16(np.array([[1.0, 2.0], [3.0, 5.0]], dtype=np.float32))
    np.testing.assert_array_equal(out, [[0, 16383], [32767, 65535]])
    assert not to_uint16(np.ones((2, 2), dtype=np.float32)).any()


def test_depth_cli_writes_16_bit_png_and_preview(tmp_path) -> None:
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    checkpoint = tmp_path / "dpt_tiny.pt"
    torch.save(lvit.create_model("dpt_tiny", task="depth").state_dict(), checkpoint)
    assert "lvit.depth" in _COMMAND_MODULES
    parser = argparse.ArgumentParser()  # only this subcommand: importing every other one is slow
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["depth", str(image), "--model", "dpt_tiny", "--net-size", "64",
                              "--checkpoint", str(checkpoint), "--out", str(out)])
    assert args.func(args) == 0
    raw, preview = Image.open(out / "scene.png"), Image.open(out / "scene_preview.png")
    # the PNG header itself (bit depth 16, colour type 0 = grey): Pillow < 10.3 opens such files as mode "I"
    header = (out / "scene.png").read_bytes()[:26]
    assert header[24:26] == bytes([16, 0]) and raw.size == (56, 40)
    assert preview.mode == "RGB" and preview.size == (56, 40)


def test_depth_cli_names_missing_inputs_and_unknown_models_before_any_work(tmp_path) -> None:
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())

    def run(*argv: str) -> None:
        args = parser.parse_args(["depth", *argv])
        args.func(args)

    checkpoint = tmp_path / "localvit_tiny.pt"  # a real checkpoint, of another model
    torch.save(lvit.create_model("localvit_tiny").state_dict(), checkpoint)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")

    with pytest.raises(SystemExit, match=r"^lvit depth: no such file: .*nope\.png, .*nope\.pt$"):
        run(str(image), str(tmp_path / "nope.png"), "--checkpoint", str(tmp_path / "nope.pt"))
    with pytest.raises(SystemExit, match=r"^lvit depth: not an image PIL can read: .*notes\.png$"):
        run(str(image), str(not_an_image), "--checkpoint", str(checkpoint))
    with pytest.raises(SystemExit, match=r"^lvit depth: 'dpt_hybird' is not a DPT model \(did you mean "
                                         r"'dpt_hybrid'\?\); DPT models: dpt_base, "):
        run(str(image), "--model", "dpt_hybird", "--checkpoint", str(checkpoint))
    with pytest.raises(SystemExit, match=r"^lvit depth: 'localvit_tiny' is not a DPT model"):
        run(str(image), "--model", "localvit_tiny", "--checkpoint", str(checkpoint))
    with pytest.raises(SystemExit, match=r"^lvit depth: cannot load checkpoint .*localvit_tiny\.pt into DPT"):
        run(str(image), "--model", "dpt_tiny", "--checkpoint", str(checkpoint))


def test_depth_cli_refuses_to_run_without_weights(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    with pytest.raises(SystemExit) as exit_info:  # an untrained model's "depth" looks real: no default
        parser.parse_args(["depth", str(tmp_path / "scene.png")])
    assert exit_info.value.code == 2 and "--checkpoint" in capsys.readouterr().err


def test_segmentation_model_is_refused_up_front() -> None:
    model = lvit.create_model("dpt_tiny", task="segmentation", num_classes=3, **MICRO_DPT)
    with pytest.raises(ValueError, match=r"needs a depth model \(task='depth'\)"):
        lvit.predict_depth(model, np.zeros((64, 64, 3), dtype=np.uint8), net_size=64)
