"""The paper's Params/FLOPs convention (reference localvit.md §2.3) and every published figure, row by row."""

from __future__ import annotations

import csv
import io

import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import Attention

import lvit
from lvit.cli import main
from lvit.complexity import complexity_rows, count_macs, count_macs_by_part, count_params, matches_printed
from lvit.experiments import list_experiments

pytestmark = pytest.mark.usefixtures("single_thread")


class _Tiny(nn.Module):
    """One of each counted kind, plus kinds the convention ignores (LayerNorm, GELU, sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)  # on 1x3x5x5
        self.bn = nn.BatchNorm2d(4)
        self.relu6 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(4)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4, 6)
        self.attn = Attention(8, num_heads=2, qkv_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.relu6(self.bn(self.conv(x)))).flatten(1)
        y = self.fc(self.gelu(self.norm(y))).sigmoid()
        tokens = torch.cat([y, y[:, :2]], dim=1).view(1, 1, 8).expand(1, 5, 8)
        return self.attn(tokens)


def test_counting_rules_by_hand() -> None:
    conv = 4 * 5 * 5 * (3 * 3 * 3) + 4 * 5 * 5  # MACs + one bias add per output element
    bn = 2 * 4 * 5 * 5
    relu6 = 4 * 5 * 5
    pool = 4 * 5 * 5  # input numel
    fc = 4 * 6 + 6  # bias once per feature
    n, d = 5, 8
    attention = (n * d * 3 * d + 3 * d) + 2 * n * n * d + (n * d * d + d)  # qkv + q@k, attn@v + proj
    assert count_macs(_Tiny(), (3, 5, 5)) == conv + bn + relu6 + pool + fc + attention


def test_macs_by_part_split_the_total_by_top_level_child() -> None:
    tiny = _Tiny()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), tiny)  # the conv keeps the 1x3x5x5 shape _Tiny expects
    parts = count_macs_by_part(model, (3, 5, 5))
    assert list(parts) == ["0", "1"]
    assert parts["0"] == 5 * 5 * 3 * 3 + 5 * 5 * 3  # 1x1 conv MACs + bias adds
    assert parts["1"] == count_macs(tiny, (3, 5, 5))
    assert sum(parts.values()) == count_macs(model, (3, 5, 5))


def test_linear_bias_is_counted_once_per_feature_not_per_token() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(2).transpose(1, 2))  # 7*7 tokens of 3 features

    assert count_macs(Tokens(), (3, 7, 7)) == 49 * 3 * 2 + 2


def test_deit_tiny_by_hand() -> None:
    # Reference §2.3 rules applied to DeiT-T (N = 197 tokens, d = 192, 12 blocks, MLP 768).
    n, d, h = 197, 192, 768
    patch_embed = 196 * d * 3 * 16 * 16 + 196 * d
    attention = n * d * 3 * d + 3 * d + 2 * n * n * d + n * d * d + d
    mlp = n * d * h + h + n * h * d + d
    head = d * 1000 + 1000
    with torch.device("meta"):
        model = lvit.create_model("deit_tiny_patch16_224")
    assert count_macs(model) == patch_embed + 12 * (attention + mlp) + head  # 1.2537 G


def test_count_params_excludes_buffers_and_frozen() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    model[0].bias.requires_grad_(False)
    assert count_params(model) == 6 + 6


def test_count_macs_restores_training_mode() -> None:
    model = _Tiny().train()
    count_macs(model, (3, 5, 5))
    assert model.training


@pytest.mark.parametrize(("ours", "printed", "expected"), [
    (1.2801, 1.28, True), (1.2801, 1.3, True), (1.2625, 1.27, False), (5.909, 5.9, True), (9.376, 9.4, True),
    (13.229, 13.2, True), (4.7436, 4.74, True), (4.7436, 4.8, False), (1.0, None, None),
])
def test_matches_printed_digits(ours: float, printed: float | None, expected: bool | None) -> None:
    assert matches_printed(ours, printed) is expected


def test_printed_trailing_zero_is_checked_to_its_digits() -> None:
    assert matches_printed(1.4038, 1.4) and matches_printed(1.4038, 1.4, digits=2)
    assert not matches_printed(1.4501, 1.4, digits=1) and not matches_printed(1.4149, 1.4, digits=2)


@pytest.fixture(scope="module")
def rows() -> dict[tuple[str, str], object]:
    return {(r.experiment, r.row): r for r in complexity_rows()}


# Every row of the LocalViT experiments that prints a Params or FLOPs figure, read from the declarations.
_PUBLISHED = [(e.name, r.label) for e in list_experiments("localvit") for r in e.rows
              if {"params_m", "flops_g"} & set(r.published)]


def test_all_seed_tables_have_published_complexity() -> None:
    names = {name for name, _ in _PUBLISHED}
    assert {"localvit_expansion_dw", "localvit_activation", "localvit_placement", "localvit_main"} <= names
    assert len(_PUBLISHED) == 6 + 8 + 5 + 8


@pytest.mark.parametrize(("experiment", "label"), _PUBLISHED)
def test_published_params_and_flops_reproduced(rows: dict, experiment: str, label: str) -> None:
    row = rows[(experiment, label)]
    assert row.params_match, f"{label}: ours {row.params_m:.4f} M vs printed {row.published_params_m}"
    assert row.flops_match, f"{label}: ours {row.flops_g:.4f} G vs printed {row.published_flops_g}"


def test_placement_flops_distinguish_the_counter(rows: dict) -> None:
    # The paper's 1.26 / 1.27 / 1.28 G need the repo counter; FlopCounterMode gives 1.26 / 1.26 / 1.27 (§2.3).
    labels = ("Low 1~4", "Low 1~8", "All 1~12")
    flops = [round(rows[("localvit_placement", label)].flops_g, 4) for label in labels]
    assert flops == [1.2625, 1.2713, 1.2801]


def test_cli_csv_lists_rows_with_match_columns(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["complexity", "--format", "csv", "--experiment", "localvit_placement"])
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert status == 0
    assert [r["row"] for r in table] == ["High 9~12", "Mid 5~8", "Low 1~4", "Low 1~8", "All 1~12"]
    assert all(r["params_match"] == r["flops_match"] == "True" for r in table)
    assert float(table[3]["published_params_m"]) == 5.84


def test_cli_rejects_unknown_experiment() -> None:
    with pytest.raises(SystemExit, match=r"^lvit complexity: unknown experiment 'localvit_nope' .*; valid .*"
                                         r"localvit_placement"):
        main(["complexity", "--experiment", "localvit_nope"])
