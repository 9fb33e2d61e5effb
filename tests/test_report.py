"""lvit.report on hand-made experiments and results; every expectation is worked out by hand."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from lvit.experiments import Claim, Experiment, Metric, Row
from lvit.report import (
    AGREEMENT_MATCH,
    AGREEMENT_OPPOSITE,
    AGREEMENT_PAPER_TIED,
    AGREEMENT_REFERENCE,
    AGREEMENT_SAME,
    AGREEMENT_TIED,
    CLAIM_FAILS,
    CLAIM_HOLDS,
    CLAIM_NOT_ENOUGH,
    MISSING,
    NOT_BUILT,
    claim_status,
    comparison_table,
    experiment_section,
    latex_table,
    plot_comparison,
    rank_agreement,
    save_figure,
)

EXPERIMENT = Experiment(
    name="toy_table",
    paper="localvit",
    title="Toy table",
    task="classification",
    rows=(
        Row("paper only", "", published={"top1": 71.0}),  # a baseline lvit does not build
        Row("base", "m", published={"top1": 70.0}),
        Row("better", "m", published={"top1": 72.5}),
        Row("best", "m", published={"top1": 75.0}),
        Row("absent", "m", published={"top1": 74.0}),
    ),
    metrics=(Metric("top1", higher_is_better=True, label="Top-1 (%)"),),
    claims=(
        Claim("best beats base", "top1", lambda m: m["best"] > m["base"]),
        Claim("better beats best", "top1", lambda m: m["better"] > m["best"]),
        Claim("absent beats base", "top1", lambda m: m["absent"] > m["base"]),
    ),
)


def _results(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"experiment": "toy_table", "row": row, "profile": "smoke", "seed": seed, "metric": "top1",
         "value": v}
        for row, seeds in values.items() for seed, v in enumerate(seeds)
    ])


# base: mean 2, std 1; better: mean 1 (below base, the paper has it above); best: mean 75 (the printed value)
RESULTS = _results({"base": [1.0, 2.0, 3.0], "better": [1.0, 1.0, 1.0], "best": [75.0, 75.0, 75.0]})


def test_comparison_table_statistics_and_missing_row():
    table = comparison_table(EXPERIMENT, RESULTS).set_index("row")
    assert list(table.index) == ["paper only", "base", "better", "best", "absent"]  # paper order, all kept
    assert table.loc["base", "mean"] == pytest.approx(2.0)
    assert table.loc["base", "std"] == pytest.approx(1.0)  # sample std of 1, 2, 3
    assert table.loc["base", "n_seeds"] == 3
    assert table.loc["base", "delta"] == pytest.approx(2.0 - 70.0)
    assert table.loc["base", "ours"] == "2.00 ± 1.00 (n=3)"
    absent = table.loc["absent"]
    assert absent["ours"] == MISSING and absent["agreement"] == MISSING
    assert absent["n_seeds"] == 0
    assert math.isnan(absent["mean"]) and math.isnan(absent["delta"])  # never 0
    assert absent["published"] == 74.0
    assert table.loc["paper only", "ours"] == NOT_BUILT and table.loc["paper only", "agreement"] == NOT_BUILT


def test_agreement_direction_relative_to_first_row():
    agreement = comparison_table(EXPERIMENT, RESULTS).set_index("row")["agreement"]
    assert agreement["base"] == AGREEMENT_REFERENCE  # the first row with both numbers
    assert agreement["better"] == AGREEMENT_OPPOSITE  # paper: 72.5 > 70; ours: 1 < 2
    assert agreement["best"] == AGREEMENT_MATCH  # 75.0 equals the printed 75.0
    nudged = _results({"base": [2.0], "best": [75.2]})
    assert comparison_table(EXPERIMENT, nudged).set_index("row").loc["best", "agreement"] == AGREEMENT_SAME
    # a tie has no direction: not "opposite" (collapsed runs tie), nor "same" when only the paper ties
    tied = _results({"base": [2.0], "better": [2.0]})
    assert comparison_table(EXPERIMENT, tied).set_index("row").loc["better", "agreement"] == AGREEMENT_TIED
    same_print = {"top1": 70.0}
    paper_tie = Experiment("toy_tie", "localvit", "t", "classification", metrics=EXPERIMENT.metrics,
                           rows=(Row("a", "m", published=same_print), Row("b", "m", published=same_print)))
    frame = pd.DataFrame([{"experiment": "toy_tie", "row": r, "seed": 0, "metric": "top1", "value": v}
                          for r, v in (("a", 1.0), ("b", 2.0))])
    assert comparison_table(paper_tie, frame).set_index("row").loc["b", "agreement"] == AGREEMENT_PAPER_TIED


def test_match_tolerance_is_half_a_printed_digit():
    experiment = Experiment("toy_params", "localvit", "t", "complexity",
                            rows=(Row("r", "m", published={"p": 5.7}),),
                            metrics=(Metric("p", higher_is_better=False),))

    def agreement(v):
        frame = pd.DataFrame([{"experiment": "toy_params", "row": "r", "seed": 0, "metric": "p", "value": v}])
        return comparison_table(experiment, frame)["agreement"][0]
    assert agreement(5.74) == AGREEMENT_MATCH
    assert agreement(5.76) != AGREEMENT_MATCH


def test_kendall_tau_hand_made():
    # published order 70 < 72.5 < 74 < 75; ours 10, 20, 40 (absent), 30 (best):
    # pairs (base,better) C, (base,absent) C, (base,best) C, (better,absent) C, (better,best) C,
    # (absent,best) D -> tau = (5 - 1) / 6
    frame = _results({"base": [10.0], "better": [20.0], "absent": [40.0], "best": [30.0]})
    agreement = rank_agreement(EXPERIMENT, frame)
    assert agreement.n_rows == 4
    assert agreement.tau == pytest.approx(4 / 6)


def test_kendall_tau_ignores_missing_rows_and_is_undefined_below_two():
    agreement = rank_agreement(EXPERIMENT, RESULTS)  # three rows with results: means 2, 1, 75
    assert agreement.n_rows == 3
    assert agreement.tau == pytest.approx(1 / 3)  # (base,better) D, (base,best) C, (better,best) C
    assert math.isnan(rank_agreement(EXPERIMENT, _results({"base": [1.0]})).tau)


def test_claim_status():
    status = claim_status(EXPERIMENT, RESULTS).set_index("claim")
    assert status.loc["best beats base", "ours"] == CLAIM_HOLDS
    assert status.loc["better beats best", "ours"] == CLAIM_FAILS
    assert status.loc["absent beats base", "ours"] == CLAIM_NOT_ENOUGH
    # the same claims on the printed numbers: 75 > 70 holds, 72.5 > 75 does not, 74 > 70 holds
    assert list(status["paper"]) == [CLAIM_HOLDS, CLAIM_FAILS, CLAIM_HOLDS]


def test_a_tie_is_not_best():
    # Read ablation at proxy: three DPT stand-ins that all collapsed to one constant map score identically;
    # "Project is best" must not hold among equals, and must hold when Project alone is lowest.
    from lvit.experiments import get_experiment

    experiment = get_experiment("dpt_read_ablation")

    def claim_on(means):
        records = [_stored_record(row, "mean_abs_rel", value) | {"experiment": experiment.name}
                   for row, value in means.items()]
        return claim_status(experiment, pd.DataFrame(records))["ours"].iloc[0]

    assert claim_on({"Ignore": 8.58, "Add": 8.58, "Project": 8.58}) == CLAIM_FAILS
    assert claim_on({"Ignore": 8.58, "Add": 8.58, "Project": 8.57}) == CLAIM_HOLDS
    assert claim_on({"Project": 8.57}) == CLAIM_NOT_ENOUGH


def test_mixed_profiles_are_refused():
    mixed = pd.concat([RESULTS, RESULTS.assign(profile="proxy")])
    with pytest.raises(ValueError, match="mix profiles"):
        comparison_table(EXPERIMENT, mixed)


def test_report_section_and_latex_show_missing_not_zero(tmp_path):
    section = experiment_section(EXPERIMENT, RESULTS, "smoke", None, tmp_path)
    absent_line = next(line for line in section.splitlines() if line.startswith("| absent"))
    assert MISSING in absent_line and " 0 " not in absent_line
    assert "not enough rows" in section
    latex = latex_table(EXPERIMENT, RESULTS, "smoke")
    absent_tex = next(line for line in latex.splitlines() if line.startswith("absent"))
    assert absent_tex == r"absent & 74.0 & missing \\"
    assert r"2.00 $\pm$ 1.00" in latex


def test_saved_svg_is_byte_identical_across_saves(tmp_path):
    figure = plot_comparison(EXPERIMENT, RESULTS, profile="smoke")
    first = save_figure(figure, tmp_path / "a", "toy")
    second = save_figure(figure, tmp_path / "b", "toy")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def _stored_record(row: str, metric: str, value: float) -> dict:
    return {"experiment": "localvit_placement", "row": row, "profile": "smoke", "seed": 0, "metric": metric,
            "value": value, "split": "val", "epoch": 1, "git_sha": "abc", "dirty": False, "device": "cpu",
            "torch": "t", "timm": "t", "lvit": "0", "started_at": "2026-01-01T00:00:00", "wall_s": 2.0,
            "config_hash": "h"}


def test_write_report_from_the_result_store(tmp_path):
    from lvit.report import write_report
    from lvit.results import append_results

    append_results(tmp_path, "smoke", "localvit_placement",
                   [_stored_record("Low 1~4", "top1", 30.0), _stored_record("Mid 5~8", "top1", 20.0),
                    _stored_record("High 9~12", "top1", 10.0)])
    report = write_report(tmp_path).read_text()
    assert report.count("## Profile smoke") == 1 and "## Profile proxy" not in report  # only profiles run
    section = report.split("### Table: placement of locality")[1].split("###")[0]
    top1 = section.split("**Top-1 Acc. (%)**")[1].split("**Params")[0]
    rows = {line.split("|")[1].strip(): line for line in top1.splitlines() if line.startswith("| ")}
    assert "missing" in rows["All 1~12"] and "30.00 ± – (n=1)" in rows["Low 1~4"]
    # 10 < 20 < 30 for High < Mid < Low, as the paper's 69.1 < 72.1 < 73.1: the claim holds
    assert "Locality is more important for lower layers. — ours: **holds**" in section
    # 3 of the 5 rows ran and their order matches the paper's: tau = 1
    assert "τ = +1.00 over 3 rows" in top1
    assert (tmp_path / "smoke" / "tables" / "localvit_placement.tex").is_file()
    assert "pretrained_" not in report  # experiments without the profile and without results are left out


def test_runs_made_under_an_older_recipe_are_reported_out_of_date(tmp_path, monkeypatch):
    from lvit.engine.run import run_experiment
    from lvit.experiments import get_experiment, recipes
    from lvit.report import experiment_section, stale_runs

    experiment = get_experiment("localvit_placement")
    stored = run_experiment(experiment.name, "smoke", seeds=[0, 1], results_dir=tmp_path,
                            data_root=tmp_path, rows=["High 9~12"])
    assert stale_runs(experiment, stored, "smoke") == 0  # the runner and the check key runs alike
    monkeypatch.setitem(recipes.CLASSIFICATION_PROFILES, "smoke",
                        {**recipes.CLASSIFICATION_PROFILES["smoke"], "lr": 5e-4})
    assert stale_runs(experiment, stored, "smoke") == 2  # both seeds predate the changed recipe
    section = experiment_section(experiment, stored, "smoke", None, tmp_path)
    assert "**Out of date:** 2 of 2 runs" in section


def test_a_dense_run_is_out_of_date_when_its_backbone_pretraining_recipe_changes(monkeypatch):
    from lvit.engine.run import declared_config_hash
    from lvit.experiments import recipes

    before = declared_config_hash("dpt_read_ablation", "Ignore", "smoke", 0)
    monkeypatch.setitem(recipes.CLASSIFICATION_PROFILES, "smoke",
                        {**recipes.CLASSIFICATION_PROFILES["smoke"], "epochs": 2})
    assert declared_config_hash("dpt_read_ablation", "Ignore", "smoke", 0) != before


def test_figure_metrics_are_declared_metrics_and_each_gets_a_png_and_svg(tmp_path):
    from lvit.experiments import list_experiments
    from lvit.report import save_comparison_figures

    for experiment in list_experiments():
        unknown = set(experiment.figure_metrics) - {m.name for m in experiment.metrics}
        assert not unknown, (experiment.name, unknown)
    results = pd.DataFrame({"experiment": "dpt_segmentation", "row": "DPT-Hybrid", "profile": "smoke",
                            "seed": 0, "metric": ["mean_iou", "pixel_accuracy"], "value": [40.0, 80.0]})
    written = save_comparison_figures("dpt_segmentation", results, "smoke", tmp_path)
    assert sorted(p.name for p in written) == [
        "dpt_segmentation-mean_iou.png", "dpt_segmentation-mean_iou.svg",
        "dpt_segmentation-pixel_accuracy.png", "dpt_segmentation-pixel_accuracy.svg",
    ]
    assert all(p.stat().st_size > 0 for p in written)


def _read_ablation_seeds(tmp_path, seeds: dict[str, list[tuple[float, ...]]]) -> pd.DataFrame:
    """Stored Read-ablation results at proxy: per row, per seed (mean AbsRel, last val_constant_fraction[,
    init_constant_fraction]), each seed's history ending in that fraction; as the report loads them."""
    from lvit.results import append_results, mark_collapsed, write_history

    name = "dpt_read_ablation"
    records = []
    for row, runs in seeds.items():
        for seed, (value, fraction, *at_init) in enumerate(runs):
            first = {"epoch": 1, "val_constant_fraction": 1.0 - fraction}
            write_history(tmp_path, "proxy", name, row, seed,
                          [first | dict(zip(["init_constant_fraction"], at_init, strict=False)),
                           {"epoch": 2, "val_constant_fraction": fraction}])
            records.append(_stored_record(row, "mean_abs_rel", value)
                           | {"experiment": name, "profile": "proxy", "seed": seed})
    append_results(tmp_path, "proxy", name, records)
    return mark_collapsed(pd.DataFrame(records), tmp_path)


def test_mark_collapsed_flags_runs_whose_last_validation_was_constant(tmp_path):
    from lvit.experiments import get_experiment
    from lvit.report import summary_markdown
    from lvit.results import mark_collapsed

    # Ignore seed 1 ends constant, as it started; seed 2 ends constant, having started varied; seed 0 was
    # constant at epoch 1 but recovered; Add never was, and its history predates the init measurement
    marked = _read_ablation_seeds(tmp_path, {"Ignore": [(0.2, 0.0, 0.0), (8.58, 1.0, 1.0), (8.58, 1.0, 0.0)],
                                             "Add": [(0.3, 0.5)]})
    flags = {(r, s): (c, None if pd.isna(d) else d) for r, s, c, d
             in zip(marked["row"], marked["seed"], marked["collapsed"], marked["dead_at_init"], strict=True)}
    assert flags == {("Ignore", 0): (False, False), ("Ignore", 1): (True, True), ("Ignore", 2): (True, False),
                     ("Add", 0): (False, None)}
    elsewhere = mark_collapsed(pd.DataFrame([_stored_record("Low 1~4", "top1", 30.0)]), tmp_path)
    assert elsewhere["collapsed"].tolist() == [False]  # no history with the column: nothing collapsed
    assert elsewhere["dead_at_init"].isna().all()
    summary = summary_markdown(get_experiment("dpt_read_ablation"), marked)
    assert "**Collapsed:** Ignore (seed 1, dead at initialisation), Ignore (seed 2, in training) predicted" \
        in summary


def test_collapsed_seeds_are_counted_apart_and_left_out_of_means_and_claims(tmp_path):
    from lvit.experiments import get_experiment
    from lvit.report import claim_status, comparison_table, plot_comparison, summary_markdown

    experiment = get_experiment("dpt_read_ablation")
    dead = (8.58, 1.0)  # a constant map's AbsRel after alignment, the same for every collapsed model
    results = _read_ablation_seeds(tmp_path, {"Ignore": [(0.20, 0.0), (0.22, 0.0), dead],
                                              "Add": [(0.25, 0.0), (0.26, 0.0), (0.24, 0.0)],
                                              "Project": [dead, (0.18, 0.0), dead]})
    table = comparison_table(experiment, results, "mean_abs_rel").set_index("row")
    assert table.loc["Project", "mean"] == pytest.approx(0.18)
    assert table.loc["Ignore", "mean"] == pytest.approx(0.21)
    assert table["n_seeds"].tolist() == [2, 3, 1] and table["n_collapsed"].tolist() == [1, 0, 2]
    assert table.loc["Ignore", "ours"] == "0.2100 ± 0.0141 (n=2; 1 collapsed)"
    assert claim_status(experiment, results)["ours"].tolist() == ["holds"]
    # averaged in, the collapses would decide the claim: Project's two dead seeds put it last
    unmarked = results.drop(columns="collapsed")
    assert comparison_table(experiment, unmarked, "mean_abs_rel")["n_seeds"].tolist() == [3, 3, 3]
    assert claim_status(experiment, unmarked)["ours"].tolist() == ["does not hold"]
    figure = plot_comparison(experiment, results, "mean_abs_rel", profile="proxy")
    ours = figure.axes[1]
    plotted_seeds = sorted(ours.collections[0].get_offsets()[:, 0])  # the collapsed 8.58s are not there
    assert plotted_seeds == pytest.approx([0.18, 0.20, 0.22, 0.24, 0.25, 0.26])
    assert [t.get_text() for t in ours.texts if "collapsed" in t.get_text()] == ["1 collapsed", "2 collapsed"]
    summary = summary_markdown(experiment, results)
    collapsed = next(line for line in summary.splitlines() if line.startswith("**Collapsed:**"))
    assert collapsed.startswith("**Collapsed:** Ignore (seed 2), Project (seed 0), Project (seed 2) "
                                "predicted one constant map")
    assert "**Collapsed:**" not in summary_markdown(experiment, unmarked)
    latex = latex_table(experiment, results, "proxy")
    assert r"& 0.0822 & 0.2100 $\pm$ 0.0141$^\dagger$ \\" in latex  # Ignore's mean AbsRel, last column
    assert r"& 0.0831 & 0.2500 $\pm$ 0.0100 \\" in latex and "collapsed to a constant map" in latex
    assert "dagger" not in latex_table(experiment, unmarked, "proxy")


def test_a_row_whose_every_seed_collapsed_is_named_not_ranked(tmp_path):
    from lvit.experiments import get_experiment
    from lvit.report import claim_status, comparison_table, overview, summary_markdown

    experiment = get_experiment("dpt_read_ablation")
    results = _read_ablation_seeds(tmp_path, {"Ignore": [(8.58, 1.0), (8.58, 1.0)],
                                              "Add": [(0.25, 0.0), (0.27, 0.0)],
                                              "Project": [(0.18, 0.0), (0.20, 0.0)]})
    table = comparison_table(experiment, results, "mean_abs_rel").set_index("row")
    assert table.loc["Ignore", "ours"] == "collapsed (n=2)" and math.isnan(table.loc["Ignore", "mean"])
    assert table.loc["Ignore", "agreement"] == "every seed collapsed"
    assert table.loc["Add", "agreement"] == "reference row"  # the first row with a mean to compare
    claims = claim_status(experiment, results)
    assert claims[["ours", "left out"]].values.tolist() == [["holds", "Ignore"]]
    assert "**holds** (per seed: holds in 2 of 2; left out, every seed collapsed: Ignore)" in \
        summary_markdown(experiment, results)
    row = overview(results, "proxy", ["dpt_read_ablation"]).set_index("metric").loc["mean_abs_rel"]
    assert (row["rows with results"], row["seeds"], row["comparable rows"]) == ("3/3", "2", 2)


def test_seed_counts_that_differ_between_rows_are_shown_as_a_range(tmp_path):
    """A collapsed seed counts as run; "3" alone would claim seeds that Add and Project lack."""
    from lvit.experiments import get_experiment
    from lvit.report import _profile_summary, overview, plot_comparison

    experiment = get_experiment("dpt_read_ablation")
    results = _read_ablation_seeds(tmp_path, {"Ignore": [(0.20, 0.0), (0.22, 0.0), (8.58, 1.0)],
                                              "Add": [(0.25, 0.0)], "Project": [(0.18, 0.0), (0.20, 0.0)]})
    by_metric = overview(results, "proxy", [experiment.name]).set_index("metric")
    assert by_metric.loc["mean_abs_rel", "seeds"] == "1–3"
    assert re.search(r"\| 3 of 3 +\| 1–3 +\|", _profile_summary([experiment], results, "proxy"))
    figure = plot_comparison(experiment, results, "mean_abs_rel", profile="proxy")
    assert figure.axes[1].get_title() == "ours (proxy, 1–3 seeds)"


def test_a_claim_names_only_the_collapsed_rows_it_needed():
    from lvit.experiments import get_experiment
    from lvit.report import claim_status

    experiment = get_experiment("dpt_zero_shot_depth")
    records = [{"experiment": experiment.name, "row": row, "seed": 0, "metric": "eth3d_abs_rel",
                "value": value, "collapsed": row == "DPT-Large"}
               for row, value in (("DPT-Large", 5.8), ("DPT-Hybrid", 0.15))]
    claims = claim_status(experiment, pd.DataFrame(records)).set_index("claim")
    midas = claims[claims["metric"] == "eth3d_abs_rel"]
    left_out = {claim.split(" improves")[0]: row for claim, row in midas["left out"].items()}
    # both read MiDaS, which lvit does not build; only DPT-Large's claim asked for the collapsed row
    assert left_out == {"DPT-Large": "DPT-Large", "DPT-Hybrid": ""}
    assert set(midas["ours"]) == {"not enough rows"}


def test_each_claim_is_also_judged_seed_by_seed():
    from lvit.experiments import get_experiment
    from lvit.report import claim_status, summary_markdown

    experiment = get_experiment("localvit_placement")  # claims Low 1~4 > Mid 5~8 > High 9~12
    seeds = {"Low 1~4": [30.0, 31.0, 29.0], "Mid 5~8": [20.0, 32.0, 21.0], "High 9~12": [10.0, 11.0, 12.0]}
    records = [_stored_record(row, "top1", v) | {"seed": i} for row, values in seeds.items()
               for i, v in enumerate(values)]
    results = pd.DataFrame(records)
    # on the means (30.0 > 24.3 > 11.0) it holds; seed 1 has Mid above Low
    assert claim_status(experiment, results)[["ours", "per seed"]].values.tolist() == [["holds", "2 of 3"]]
    assert "— ours: **holds** (per seed: holds in 2 of 3);" in summary_markdown(experiment, results)
    one_seed = pd.DataFrame([r for r in records if r["seed"] == 0])
    assert claim_status(experiment, one_seed)["per seed"].tolist() == ["1 of 1"]
    assert "per seed" not in summary_markdown(experiment, one_seed)  # one seed: the means' own verdict
    # rows whose means cover different seeds (as when seeds collapse): on the means Low 30.5 > Mid 26.0 >
    # High 11.0 holds, but seed 1, the one seed with every row, has Mid above Low: one seed that disagrees
    # with the means is shown
    mixed = pd.DataFrame([r for r in records if (r["row"], r["seed"]) in
                          {("Low 1~4", 0), ("Mid 5~8", 0), ("Mid 5~8", 1), ("Low 1~4", 1), ("High 9~12", 1)}])
    assert claim_status(experiment, mixed)[["ours", "per seed"]].values.tolist() == [["holds", "0 of 1"]]
    assert "— ours: **holds** (per seed: holds in 0 of 1);" in summary_markdown(experiment, mixed)


def test_the_report_marks_collapsed_runs_from_the_stored_histories(tmp_path):
    from lvit.report import write_report

    _read_ablation_seeds(tmp_path, {"Ignore": [(8.58, 1.0)], "Add": [(0.25, 0.0)], "Project": [(0.18, 0.0)]})
    report = write_report(tmp_path, ["proxy"]).read_text()
    mean_table = report[report.index("**Mean** (↓)"):]
    ignore = next(line for line in mean_table.splitlines() if line.startswith("| Ignore"))
    assert "| collapsed (n=1) " in ignore and ignore.rstrip(" |").endswith("every seed collapsed")
    assert "**Collapsed:** Ignore (seed 0) predicted" in report


def test_figure_4_leaves_collapsed_seeds_out_of_the_curve():
    from lvit.report import inference_resolution_curve

    records = [{"experiment": "dpt_inference_resolution", "row": side, "seed": seed, "metric": "mean_abs_rel",
                "value": value, "collapsed": seed == 1}
               for seed, values in enumerate([(0.20, 0.22), (8.0, 8.0)]) for side, value
               in zip(("384", "448"), values, strict=True)]
    curve = inference_resolution_curve(pd.DataFrame(records))
    assert curve["seed"].tolist() == [0, 0]
    assert curve["relative_loss"].tolist() == pytest.approx([0.0, 10.0])


def test_rows_at_chance_need_every_seed_within_three_standard_errors(tmp_path):
    from lvit.experiments import get_experiment
    from lvit.report import rows_at_chance

    experiment = get_experiment("localvit_main")  # proxy: 64 classes, 2000 validation images
    recipe = experiment.profiles["proxy"]
    chance = 1 / recipe["num_classes"]
    ceiling = 100 * (chance + 3 * math.sqrt(chance * (1 - chance) / recipe["val_samples"]))
    assert 2.3 < ceiling < 2.5  # 1.5625 % + 3 x 0.278 %
    seeds = {"DeiT-T": [1.5, 2.0, ceiling], "LocalViT-T": [18.0, 19.0, 17.0], "PVT-T": [1.6, ceiling + 0.1]}
    records = [_stored_record(row, "top1", v) | {"experiment": experiment.name, "profile": "proxy", "seed": i}
               for row, values in seeds.items() for i, v in enumerate(values)]
    assert rows_at_chance(experiment, pd.DataFrame(records), "proxy") == ["DeiT-T"]
    assert rows_at_chance(get_experiment("dpt_read_ablation"), pd.DataFrame(records), "proxy") == []
    section = experiment_section(experiment, pd.DataFrame(records), "proxy", None, tmp_path)
    assert "**At chance:** DeiT-T:" in section


def test_provenance_names_the_backbone_pretraining_each_dense_seed_started_from():
    from lvit.report import provenance_summary

    def record(row: str, seed: int, metric: str, backbone_run: str) -> dict:
        return {"row": row, "seed": seed, "metric": metric, "value": 0.2, "git_sha": "abc", "device": "cpu",
                "backbone_run": backbone_run}

    rows = [record(row, seed, metric, run) for row, seed, run in
            [("Ignore", 0, ""), ("Add", 0, ""), ("Ignore", 1, "1633@20261127T1200Z"),
             ("Add", 2, "1633@20261127T1200Z")] for metric in ("mean_abs_rel", "hrwsi_abs_rel")]
    summary = provenance_summary(pd.DataFrame(rows))
    assert summary["backbone pretraining"] == \
        "1633@20261127T1200Z: Ignore, Add at seeds 1, 2; not recorded: Ignore, Add at seeds 0"
    unrecorded = provenance_summary(pd.DataFrame([{**r, "backbone_run": ""} for r in rows]))
    assert "backbone pretraining" not in unrecorded


def test_lvit_report_refuses_a_results_directory_that_is_not_there(tmp_path):
    from lvit.cli import main

    with pytest.raises(SystemExit, match="lvit report: no results directory .*nope"):
        main(["report", "--results-dir", str(tmp_path / "nope")])
    assert not (tmp_path / "nope").exists()
    with pytest.raises(SystemExit, match=r"unknown profile 'proxi' \(did you mean 'proxy'\?\)"):
        main(["report", "--profile", "proxi", "--results-dir", str(tmp_path)])


def test_lvit_report_for_one_profile_refuses_an_absent_one_and_names_what_it_leaves_out(tmp_path, capsys):
    from lvit.cli import main

    (tmp_path / "smoke").mkdir()
    with pytest.raises(SystemExit, match=r"no proxy results under .* \(profiles with results: smoke\)"):
        main(["report", "--profile", "proxy", "--results-dir", str(tmp_path)])
    assert not (tmp_path / "REPORT.md").exists()  # nothing written over a report of the real results

    (tmp_path / "proxy").mkdir()
    assert main(["report", "--profile", "smoke", "--results-dir", str(tmp_path)]) == 0
    assert "REPORT.md now leaves out proxy" in capsys.readouterr().err
    assert "## Profile smoke" in (tmp_path / "REPORT.md").read_text()
    assert main(["report", "--results-dir", str(tmp_path)]) == 0
    assert "leaves out" not in capsys.readouterr().err
    assert "## Profile proxy" in (tmp_path / "REPORT.md").read_text()
