"""Published vs reproduced: comparison tables, rank agreement, claim status, figures and ``REPORT.md``.

Everything here is a pure function of a tidy result DataFrame (one row per experiment, row, profile,
seed and metric; see :mod:`lvit.results`) and the experiment declarations of :mod:`lvit.experiments`.
Published numbers come only from the declarations. A row without results stays *missing* (NaN in
numeric columns, "missing" in text), never zero.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from scipy.stats import kendalltau

from lvit.experiments import Claim, Experiment, get_experiment, list_experiments

MISSING = "missing"
# A published baseline that lvit does not build (``Row.model == ""``): never run, so not "missing".
NOT_BUILT = "paper baseline, not built"

# Agreement of one row with the paper, strongest first.
AGREEMENT_MATCH = "matches (within rounding)"
AGREEMENT_REFERENCE = "reference row"
AGREEMENT_SAME = "same direction"
AGREEMENT_OPPOSITE = "opposite direction"
# Ours equal to the reference row's, or the paper's: no direction to compare.
AGREEMENT_TIED = "tied with reference (ours)"
AGREEMENT_PAPER_TIED = "tied with reference (paper)"
AGREEMENT_NO_PUBLISHED = "no published value"
AGREEMENT_COLLAPSED = "every seed collapsed"

CLAIM_HOLDS = "holds"
CLAIM_FAILS = "does not hold"
CLAIM_NOT_ENOUGH = "not enough rows"
CLAIM_COLUMNS = ["claim", "metric", "ours", "per seed", "paper", "left out"]

# Fixed so that SVG ids, and hence the files, are identical run after run.
_SVG_HASHSALT = "lvit"


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------


def _metric_names(experiment: Experiment, metric: str | None) -> list[str]:
    names = [m.name for m in experiment.metrics]
    if metric is None:
        return names
    if metric not in names:
        raise KeyError(f"experiment {experiment.name!r} has no metric {metric!r}; valid metrics: "
                       f"{', '.join(names)}")
    return [metric]


def _experiment_results(experiment: Experiment, results_df: pd.DataFrame) -> pd.DataFrame:
    """The result rows of one experiment at one profile (several profiles at once would mix recipes)."""
    if results_df.empty:
        return results_df
    rows = results_df[results_df["experiment"] == experiment.name]
    if "profile" in rows and rows["profile"].nunique() > 1:
        raise ValueError(f"results for {experiment.name!r} mix profiles {sorted(rows['profile'].unique())}; "
                         "pass the rows of one profile")
    return rows


def _metric_values(experiment: Experiment, results_df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The experiment's result rows of one metric that have a value (an empty frame when none)."""
    rows = _experiment_results(experiment, results_df)
    if rows.empty:
        return pd.DataFrame(columns=["row", "seed", "value"])
    return rows.loc[rows["metric"] == metric].dropna(subset=["value"])


def _collapsed(rows: pd.DataFrame) -> pd.Series:
    """Which result rows come from a collapsed run (:func:`lvit.results.mark_collapsed`; unmarked: none)."""
    if "collapsed" not in rows:
        return pd.Series(False, index=rows.index, dtype=bool)
    return rows["collapsed"].fillna(False).astype(bool)


def seed_statistics(experiment: Experiment, results_df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, sample std and seed count ``n`` per declared row (missing rows: NaN mean, n = 0), in paper order.

    Runs marked ``collapsed`` are counted in ``n_collapsed`` and left out of mean, std and ``n``: their
    values are a constant map's, the same whatever the model, so averaging them in would rank the rows by
    how many of their seeds collapsed.
    """
    labels = [r.label for r in experiment.rows]
    values = _metric_values(experiment, results_df, metric)
    collapsed = _collapsed(values)
    grouped = values.loc[~collapsed].groupby("row")["value"]
    stats = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "n": grouped.count(),
                          "n_collapsed": values.loc[collapsed].groupby("row").size()})
    stats = stats.reindex(labels)
    stats[["n", "n_collapsed"]] = stats[["n", "n_collapsed"]].fillna(0).astype(int)
    stats.index.name = "row"
    return stats


def _decimals(value: float) -> int:
    """Digits after the point as the paper printed the value: the shortest repr, at least one (the
    tables print 75.0, which reads back as 75)."""
    text = repr(float(value))
    if "e" in text or "." not in text:
        return 1
    return max(1, len(text.split(".")[1].rstrip("0")))


def _as_printed(value: float) -> str:
    """A published value with the digits the paper printed (6.0, not 6)."""
    return "–" if math.isnan(value) else f"{value:.{_decimals(value)}f}"


def _printed_tolerance(value: float) -> float:
    """Half a unit of the last printed digit: ``5.7`` covers ``[5.65, 5.75]``."""
    return 0.5 * 10.0 ** -_decimals(value) + 1e-12


def _format_ours(mean: float, std: float, n: int, decimals: int, built: bool, n_collapsed: int = 0) -> str:
    if not built:
        return NOT_BUILT
    if n == 0 and n_collapsed:
        return f"collapsed (n={n_collapsed})"
    if n == 0 or math.isnan(mean):
        return MISSING
    spread = f"{std:.{decimals}f}" if n > 1 else "–"
    collapsed = f"; {n_collapsed} collapsed" if n_collapsed else ""
    return f"{mean:.{decimals}f} ± {spread} (n={n}{collapsed})"


def _agreement(published: float, mean: float, ref_published: float, ref_mean: float,
               is_reference: bool, built: bool) -> str:
    if not built:
        return NOT_BUILT
    if math.isnan(mean):
        return MISSING
    if math.isnan(published):
        return AGREEMENT_NO_PUBLISHED
    if abs(mean - published) <= _printed_tolerance(published):
        return AGREEMENT_MATCH
    if is_reference:
        return AGREEMENT_REFERENCE
    if math.isnan(ref_mean) or math.isnan(ref_published):
        return MISSING
    # Direction of this row relative to the table's first row, in the paper and in ours.
    paper_direction, our_direction = np.sign(published - ref_published), np.sign(mean - ref_mean)
    if our_direction == 0:
        return AGREEMENT_TIED
    if paper_direction == 0:
        return AGREEMENT_PAPER_TIED
    return AGREEMENT_SAME if paper_direction == our_direction else AGREEMENT_OPPOSITE


def comparison_table(experiment: Experiment | str, results_df: pd.DataFrame,
                     metric: str | None = None) -> pd.DataFrame:
    """Published vs ours per row (and per metric when ``metric`` is None), in the paper's row order.

    Columns: ``metric, row, published, ours`` (text: mean ± std (n=seeds), "collapsed" or "missing"),
    ``mean, std, n_seeds, n_collapsed`` (seeds left out, :func:`seed_statistics`), ``delta`` (ours −
    published; NaN when either is missing) and ``agreement``: the row matches the printed value within its
    rounding, or moves in the same / opposite direction as in the paper relative to the reference row (the
    first row with both a published value and ours), or is tied with it in ours or in the paper (a tie has
    no direction), or every seed of it collapsed. Missing rows keep NaN, never 0; published baselines lvit
    does not build say so.
    """
    experiment = get_experiment(experiment) if isinstance(experiment, str) else experiment
    tables = []
    for name in _metric_names(experiment, metric):
        stats = seed_statistics(experiment, results_df, name)
        published = pd.Series({r.label: float(r.published.get(name, math.nan)) for r in experiment.rows})
        printed = [p for p in published if not math.isnan(p)]
        # One digit more than the paper printed; three when it printed nothing to compare with.
        decimals = min(max(_decimals(p) for p in printed) + 1, 4) if printed else 3
        comparable = [label for label in stats.index
                      if not math.isnan(published[label]) and not math.isnan(stats.loc[label, "mean"])]
        reference = comparable[0] if comparable else experiment.rows[0].label
        built = {r.label: bool(r.model) for r in experiment.rows}
        table = pd.DataFrame({
            "metric": name,
            "row": stats.index,
            "published": published.reindex(stats.index).to_numpy(),
            "ours": [_format_ours(m, s, n, decimals, built[label], k) for label, m, s, n, k
                     in zip(stats.index, stats["mean"], stats["std"], stats["n"], stats["n_collapsed"],
                            strict=True)],
            "mean": stats["mean"].to_numpy(dtype=float),
            "std": stats["std"].to_numpy(dtype=float),
            "n_seeds": stats["n"].to_numpy(),
            "n_collapsed": stats["n_collapsed"].to_numpy(),
        })
        table["delta"] = table["mean"] - table["published"]
        table["agreement"] = [
            AGREEMENT_COLLAPSED if n == 0 and k else
            _agreement(p, m, published[reference], stats.loc[reference, "mean"], label == reference,
                       built[label])
            for label, p, m, n, k in zip(table["row"], table["published"], table["mean"], table["n_seeds"],
                                         table["n_collapsed"], strict=True)
        ]
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


@dataclass(frozen=True)
class RankAgreement:
    metric: str
    tau: float  # Kendall τ-b between published and our means over the rows that have both; NaN if undefined
    pvalue: float
    n_rows: int

    def describe(self) -> str:
        if math.isnan(self.tau):
            return f"τ undefined ({self.n_rows} comparable rows)"
        return f"τ = {self.tau:+.2f} over {self.n_rows} rows (p = {self.pvalue:.2g})"


def rank_agreement(experiment: Experiment | str, results_df: pd.DataFrame,
                   metric: str | None = None) -> RankAgreement:
    """Kendall τ between the paper's ordering of the rows and ours, for one metric (default: the first).

    τ is undefined (NaN) with fewer than two comparable rows, or when either side is constant.
    """
    experiment = get_experiment(experiment) if isinstance(experiment, str) else experiment
    name = _metric_names(experiment, metric)[0]
    table = comparison_table(experiment, results_df, name).dropna(subset=["published", "mean"])
    n_rows = len(table)
    if n_rows < 2 or table["published"].nunique() < 2 or table["mean"].nunique() < 2:
        return RankAgreement(name, math.nan, math.nan, n_rows)
    result = kendalltau(table["published"], table["mean"])
    return RankAgreement(name, float(result.statistic), float(result.pvalue), n_rows)


def claim_status(experiment: Experiment | str, results_df: pd.DataFrame) -> pd.DataFrame:
    """Whether each declared claim holds on our means, and (as a check of the declaration) on the paper's.

    A claim reads row means by label; a row it needs that has no result gives "not enough rows". Our means
    are over the seeds that did not collapse; ``left out`` names the rows none of whose seeds trained that
    the claim asked for, or all of them when it compared every row. ``per seed`` tests the claim on each
    seed's own values (rows paired by seed): "2 of 3" holds in two of the three seeds it could be judged
    on, which tells a margin within the seed spread from one that every seed repeats.
    """
    experiment = get_experiment(experiment) if isinstance(experiment, str) else experiment
    records = []
    for claim in experiment.claims:
        stats = seed_statistics(experiment, results_df, claim.metric)
        ours = {label: float(m) for label, m in stats["mean"].items() if not math.isnan(m)}
        published = {r.label: float(r.published[claim.metric]) for r in experiment.rows
                     if claim.metric in r.published}
        reads = _RowReads(ours)
        status = _evaluate_claim(claim.holds, reads)
        left_out = [label for label in stats.index[(stats["n"] == 0) & (stats["n_collapsed"] > 0)]
                    if reads.every_row or label in reads.missing]
        hold, judged = _per_seed_verdicts(experiment, results_df, claim)
        records.append({"claim": claim.text, "metric": claim.metric, "ours": status,
                        "per seed": f"{hold} of {judged}" if judged else "",
                        "paper": _evaluate_claim(claim.holds, published), "left out": ", ".join(left_out)})
    return pd.DataFrame(records, columns=CLAIM_COLUMNS)


def overview(results_df: pd.DataFrame, profile: str,
             experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """One line per (experiment, metric) at ``profile``: rows with results of rows declared, seeds, τ."""
    chosen = experiments_at(profile, results_df, experiments)
    records = []
    for experiment in chosen:
        for metric in experiment.metrics:
            table = comparison_table(experiment, results_df, metric.name)
            agreement = rank_agreement(experiment, results_df, metric.name)
            runs = _seeds_run(table)
            records.append({"experiment": experiment.name, "metric": metric.name,
                            "rows with results": f"{int((runs > 0).sum())}/{len(table)}",
                            "seeds": _seed_range(runs), "kendall_tau": round(agreement.tau, 2),
                            "comparable rows": agreement.n_rows})
    return pd.DataFrame(records)


def _seeds_run(table: pd.DataFrame) -> pd.Series:
    """Seeds run per row of a :func:`comparison_table`, collapsed ones included."""
    return table["n_seeds"] + table["n_collapsed"]


def _seed_range(runs: pd.Series) -> str:
    """Seeds run per row with results, as "3" or, where rows differ, "2–3": the largest alone would claim
    seeds that some rows do not have."""
    ran = runs[runs > 0]
    low, high = (int(ran.min()), int(ran.max())) if len(ran) else (0, 0)
    return str(high) if low == high else f"{low}–{high}"


def claims_overview(results_df: pd.DataFrame, profile: str,
                    experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """Every claim of the experiments at ``profile`` with its status on ours and on the paper's numbers."""
    chosen = experiments_at(profile, results_df, experiments)
    frames = [claim_status(e, results_df).assign(experiment=e.name) for e in chosen if e.claims]
    columns = ["experiment", *CLAIM_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def inference_resolution_curve(results_df: pd.DataFrame, metric: str = "mean_abs_rel") -> pd.DataFrame:
    """Figure 4's points per seed: ``side`` (the paper-scale side of the row), ``seed``, ``relative_loss``
    (percent change of ``metric`` against the training side; lower is better)."""
    from lvit.experiments.dpt import TRAIN_SIDE, relative_loss

    runs_of = results_df["experiment"] == "dpt_inference_resolution"
    rows = results_df[runs_of & (results_df["metric"] == metric) & ~_collapsed(results_df)]
    records = []
    for seed, runs in rows.groupby("seed"):
        values = dict(zip(runs["row"], runs["value"], strict=True))
        if str(TRAIN_SIDE) not in values:
            continue  # no reference point for this seed
        records += [{"side": int(label), "seed": seed, "relative_loss": loss}
                    for label, loss in relative_loss(values).items()]
    curve = pd.DataFrame(records, columns=["side", "seed", "relative_loss"])
    return curve.sort_values(["side", "seed"], ignore_index=True)


def _per_seed_verdicts(experiment: Experiment, results_df: pd.DataFrame, claim: Claim) -> tuple[int, int]:
    """(seeds in which the claim holds, seeds in which it could be judged), on each seed's own row values."""
    values = _metric_values(experiment, results_df, claim.metric)
    values = values[~_collapsed(values)]
    verdicts = [_evaluate_claim(claim.holds, dict(zip(runs["row"], runs["value"], strict=True)))
                for _, runs in values.groupby("seed")]
    judged = [v for v in verdicts if v != CLAIM_NOT_ENOUGH]
    return judged.count(CLAIM_HOLDS), len(judged)


class _RowReads(dict):
    """Row means as a claim reads them, noting the rows it asked for and did not find, and whether it
    looked at every row (``strictly_best`` does)."""

    def __init__(self, means: Mapping[str, float]) -> None:
        super().__init__(means)
        self.missing: set[str] = set()
        self.every_row = False

    def __missing__(self, label: str) -> float:
        self.missing.add(label)
        raise KeyError(label)

    def __iter__(self):
        self.every_row = True
        return super().__iter__()

    def items(self):
        self.every_row = True
        return super().items()

    def values(self):
        self.every_row = True
        return super().values()

    def keys(self):
        self.every_row = True
        return super().keys()


def _evaluate_claim(holds, means: Mapping[str, float]) -> str:
    try:
        return CLAIM_HOLDS if holds(means) else CLAIM_FAILS
    except KeyError:
        return CLAIM_NOT_ENOUGH


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def save_figure(fig: plt.Figure, directory: Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg``; the bytes depend only on the figure (no dates, fixed ids)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    with matplotlib.rc_context({"svg.hashsalt": _SVG_HASHSALT}):
        fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    return paths


def plot_comparison(experiment: Experiment | str, results_df: pd.DataFrame, metric: str | None = None,
                    profile: str = "") -> plt.Figure:
    """Two panels with the rows on a shared axis: the paper's value, and ours (each seed + mean ± std).

    Separate axes, because proxy and smoke data put our numbers on a different scale from the paper's;
    what should agree is the ordering of the rows.
    """
    experiment = get_experiment(experiment) if isinstance(experiment, str) else experiment
    name = _metric_names(experiment, metric)[0]
    declared = {m.name: m for m in experiment.metrics}[name]
    label = declared.label or name
    table = comparison_table(experiment, results_df, name)
    rows = list(table["row"])
    _theme()
    y = np.arange(len(rows))
    fig, (ax_paper, ax_ours) = plt.subplots(1, 2, sharey=True, figsize=(10, 0.5 * len(rows) + 2.2))
    ax_paper.scatter(table["published"], y, color="0.35", s=40, zorder=3)
    _label_points(ax_paper, table["published"], y, _as_printed)
    ax_paper.set(title="paper (published)", xlabel=label)
    seeds = _metric_values(experiment, results_df, name)
    seeds = seeds[~_collapsed(seeds)]  # a constant map's value, off the scale of the trained seeds
    if not seeds.empty:
        position = {row: i for i, row in enumerate(rows)}
        ax_ours.scatter(seeds["value"], seeds["row"].map(position), color="0.6", s=14, zorder=2,
                        label="one seed")
    ax_ours.errorbar(table["mean"], y, xerr=table["std"].fillna(0), fmt="o", color=sns.color_palette()[0],
                     capsize=4, zorder=3, label="mean ± std")
    _label_points(ax_ours, table["mean"], y, lambda value: f"{value:.4g}")
    for row_y, text, trained, n_collapsed in zip(y, table["ours"], table["n_seeds"], table["n_collapsed"],
                                                 strict=True):
        note = text if text in (MISSING, NOT_BUILT) else f"{n_collapsed} collapsed" if n_collapsed else ""
        if note:  # below the row when the row has points of its own
            ax_ours.annotate(note, (0.02, row_y + (0.32 if trained else 0.0)), va="center",
                             xycoords=("axes fraction", "data"), fontsize="small" if trained else None,
                             color="0.4" if text == NOT_BUILT else "tab:red")
    seeds = _seed_range(_seeds_run(table))
    title = f"ours ({profile}, {seeds} seed{'' if seeds == '1' else 's'})" if profile else "ours"
    ax_ours.set(title=title, xlabel=label)
    if seeds != "0":
        ax_ours.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not on rows
    ax_paper.set_yticks(y, rows)
    ax_paper.set_ylim(len(rows) - 0.4, -0.7)  # every row, even one without any value; first row on top
    for ax in (ax_paper, ax_ours):
        ax.margins(x=0.25)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5))
    arrow = "higher is better" if declared.higher_is_better else "lower is better"
    heading = textwrap.fill(f"{experiment.title} — {label} ({arrow})", width=90)
    fig.suptitle(heading)
    fig.tight_layout()
    return fig


def save_comparison_figures(experiment: Experiment | str, results_df: pd.DataFrame, profile: str,
                            figures_dir: Path) -> list[Path]:
    """:func:`plot_comparison` of each of the experiment's ``figure_metrics``, saved as
    ``<figures_dir>/<experiment>-<metric>.png`` and ``.svg``; returns the files written."""
    experiment = get_experiment(experiment) if isinstance(experiment, str) else experiment
    written: list[Path] = []
    for metric in experiment.figure_metrics:
        figure = plot_comparison(experiment, results_df, metric, profile=profile)
        written += save_figure(figure, figures_dir, f"{experiment.name}-{metric}")
    return written


def _label_points(ax: plt.Axes, values: pd.Series, y: np.ndarray, formatter: Callable[[float], str]) -> None:
    """Print each value above its point."""
    for value, row_y in zip(values, y, strict=True):
        if not math.isnan(value):
            ax.annotate(formatter(value), (value, row_y), xytext=(0, 5), textcoords="offset points",
                        ha="center", va="bottom", fontsize="x-small")


def plot_training_curves(histories: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                         accuracy: str = "val_top1", loss: str = "train_loss",
                         profile: str = "") -> plt.Figure:
    """Figures (a)–(f): per baseline/LocalViT pair, accuracy (top row) and training loss (bottom) per epoch.

    ``histories`` is :func:`lvit.results.load_histories`: one line per (row, seed, epoch) with the
    columns ``accuracy`` and ``loss``. Lines are the mean over seeds with a ±std band. ``pairs`` lists
    (baseline row, LocalViT row) per column, in the paper's order.
    """
    _theme()
    fig, axes = plt.subplots(2, len(pairs), figsize=(4.4 * len(pairs), 7.5), squeeze=False)
    panels = [(accuracy, "validation accuracy (%)"), (loss, "training loss")]
    for column, pair in enumerate(pairs):
        for line, (metric, ylabel) in enumerate(panels):
            ax = axes[line, column]
            data = histories[histories["row"].isin(pair)] if not histories.empty else histories
            if data.empty or metric not in data:
                ax.text(0.5, 0.5, MISSING, transform=ax.transAxes, ha="center", color="tab:red")
            else:
                sns.lineplot(data=data, x="epoch", y=metric, hue="row", hue_order=list(pair), errorbar="sd",
                             marker="o", ax=ax)
                ax.legend(title=None, fontsize="small", loc="best")
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
                ax.ticklabel_format(axis="y", useOffset=False)
            letter = chr(ord("a") + line * len(pairs) + column)  # the paper's (a)-(f) for three pairs
            ax.set(title=f"({letter}) {pair[0]} vs {pair[1]}", xlabel="epoch", ylabel=ylabel)
    if profile:
        fig.suptitle(f"Training curves ({profile} profile)")
    fig.tight_layout()
    return fig


def plot_inference_resolution(relative: pd.DataFrame, metric_label: str, profile: str = "",
                              trained_at: int | None = None) -> plt.Figure:
    """Figure 4: relative loss in performance (%) against the inference side; 0 at the training side.

    ``relative`` is :func:`inference_resolution_curve`: ``side`` at paper scale (trained at 384 px),
    ``seed``, ``relative_loss``. ``trained_at`` names the profile's real training side in the title.
    """
    from lvit.experiments.dpt import TRAIN_SIDE

    _theme()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if relative.empty:
        ax.text(0.5, 0.5, MISSING, transform=ax.transAxes, ha="center", color="tab:red")
    else:
        sns.lineplot(data=relative, x="side", y="relative_loss", errorbar="sd", marker="o", ax=ax,
                     label="ours (mean ± std over seeds)")
    ax.axhline(0, color="0.6", lw=1, ls="--")
    ax.axvline(TRAIN_SIDE, color="0.6", lw=1, ls=":", label=f"training side ({TRAIN_SIDE} px)")
    scaled = trained_at is not None and trained_at != TRAIN_SIDE
    scale = f"; trained at {trained_at} px, sides scaled to {TRAIN_SIDE}" if scaled else ""
    ax.set(xlabel="inference side (px, paper scale)", ylabel=f"relative loss in {metric_label} (%)",
           title=f"Inference resolution ({profile} profile{scale})" if profile else "Inference resolution")
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return fig


def plot_complexity(counts: pd.DataFrame) -> plt.Figure:
    """Ours − printed for Params and FLOPs, one line per table row, against the printed value's rounding.

    The grey bar around 0 is the interval the printed value stands for (5.7 covers 5.65–5.75); a point
    inside it agrees with the paper. ``counts`` has the fields of :class:`lvit.complexity.ComplexityRow`.
    """
    _theme()
    labels = [f"{e.removeprefix('localvit_')}: {r}" for e, r in zip(counts["experiment"], counts["row"],
                                                                      strict=True)]
    y = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, sharey=True, figsize=(11, 0.28 * len(labels) + 1.6))
    for ax, (ours, printed, label) in zip(axes, [("params_m", "published_params_m", "Params (M)"),
                                                 ("flops_g", "published_flops_g", "FLOPs (G)")], strict=True):
        tolerance = [_printed_tolerance(p) if not math.isnan(p) else math.nan for p in counts[printed]]
        ax.barh(y, [2 * t for t in tolerance], left=[-t for t in tolerance], height=0.6, color="0.85",
                label="printed value's rounding")
        delta = counts[ours] - counts[printed]
        inside = delta.abs() <= pd.Series(tolerance, index=delta.index)
        ax.scatter(delta[inside], y[inside.to_numpy()], color=sns.color_palette()[2], zorder=3,
                   label="agrees")
        ax.scatter(delta[~inside], y[~inside.to_numpy()], color=sns.color_palette()[3], marker="x", zorder=3,
                   label="disagrees")
        ax.axvline(0, color="0.5", lw=0.8)
        ax.margins(x=0.08)
        ax.set(xlabel=f"ours − paper, {label}", title=label)
    axes[0].set_yticks(y, labels, fontsize="small")
    axes[0].invert_yaxis()
    fig.suptitle("Model complexity of every LocalViT table row: ours − printed (224×224 input)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, frameon=False)
    return fig


# --------------------------------------------------------------------------------------------------
# REPORT.md and LaTeX
# --------------------------------------------------------------------------------------------------


def _markdown_table(table: pd.DataFrame) -> str:
    shown = table[["row", "published", "ours", "delta", "agreement"]].copy()
    shown["published"] = [_as_printed(p) for p in shown["published"]]
    # The difference to one digit more than the paper printed, like ours.
    shown["delta"] = [("–" if math.isnan(d) else f"{d:+.{_decimals(p) + 1}f}")
                      for d, p in zip(shown["delta"], table["published"], strict=True)]
    # The cells are already formatted as printed: tabulate must not re-parse them (75.0 -> 75, +0.2 -> 0.2).
    return shown.to_markdown(index=False, disable_numparse=True,
                             colalign=("left", "right", "left", "right", "left"))


def latex_table(experiment: Experiment, results_df: pd.DataFrame, profile: str) -> str:
    """A booktabs table: one line per row, per metric the published value and ours (mean ± std)."""
    metrics = list(experiment.metrics)
    header = " & ".join(["Row"] + [f"\\multicolumn{{2}}{{c}}{{{_latex_escape(m.label or m.name)}}}"
                                   for m in metrics])
    sub = " & ".join([""] + ["paper & ours"] * len(metrics))
    tables = {m.name: comparison_table(experiment, results_df, m.name).set_index("row") for m in metrics}
    lines, daggered = [], False
    for row in experiment.rows:
        cells = [_latex_escape(row.label)]
        for m in metrics:
            entry = tables[m.name].loc[row.label]
            cells.append("--" if math.isnan(entry["published"]) else _as_printed(entry["published"]))
            ours = _latex_escape(entry["ours"].split(" (n=")[0].replace(" ± –", ""))  # one seed: no spread
            partly_collapsed = bool(entry["n_seeds"] and entry["n_collapsed"])
            daggered |= partly_collapsed
            cells.append(ours.replace("±", "$\\pm$") + (r"$^\dagger$" if partly_collapsed else ""))
        lines.append(" & ".join(cells) + r" \\")
    footnote = r" $^\dagger$Without the seeds that collapsed to a constant map." if daggered else ""
    columns = "l" + "rr" * len(metrics)
    return "\n".join([
        f"% {experiment.title}: paper vs lvit ({profile} profile). Generated by lvit report.",
        r"\begin{table}[t]", r"\centering", f"\\begin{{tabular}}{{{columns}}}", r"\toprule",
        header + r" \\", sub + r" \\", r"\midrule", *lines, r"\bottomrule", r"\end{tabular}",
        f"\\caption{{{_latex_escape(experiment.title)} ({profile} profile).{footnote}}}", r"\end{table}", ""])


def _latex_escape(text: str) -> str:
    for char, escaped in [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                          ("#", r"\#"), ("~", r"\textasciitilde{}"), ("$", r"\$")]:
        text = text.replace(char, escaped)
    return text


def provenance_summary(results_df: pd.DataFrame) -> dict[str, str]:
    """Where the numbers of one experiment came from: code, device, library versions, wall time."""
    if results_df.empty:
        return {}

    def values(column: str) -> str:
        if column not in results_df:
            return "unknown"
        found = sorted(results_df[column].dropna().astype(str).unique())
        return ", ".join(found) or "unknown"

    code = values("git_sha")
    if "dirty" in results_df and results_df["dirty"].astype(bool).any():
        code += " (uncommitted changes)"
    summary = {"code": code, "device": values("device"),
               "versions": f"torch {values('torch')}, timm {values('timm')}, lvit {values('lvit')}"}
    if "wall_s" in results_df:
        # wall_s is repeated on every metric of one run; count each (row, seed) run once.
        runs = results_df.drop_duplicates(subset=[c for c in ("row", "seed") if c in results_df])
        summary["wall time"] = f"{runs['wall_s'].sum():.0f} s over {len(runs)} runs"
    if "started_at" in results_df:
        started = results_df["started_at"].dropna().astype(str)
        if not started.empty:
            summary["run between"] = f"{started.min()} and {started.max()}"
    backbones = _backbone_runs(results_df)
    if backbones:
        summary["backbone pretraining"] = backbones
    return summary


def _backbone_runs(results_df: pd.DataFrame) -> str:
    """Which pretraining run each dense seed's backbone came from ("" if no row names one): a configuration
    trained again on another machine is another run (weights are not committed)."""
    if "backbone_run" not in results_df or not results_df["backbone_run"].astype(bool).any():
        return ""
    runs = results_df.drop_duplicates(subset=["row", "seed"])
    parts = []
    for run, group in runs.groupby(runs["backbone_run"].replace("", "not recorded"), sort=True):
        rows = ", ".join(dict.fromkeys(group["row"]))
        parts.append(f"{run}: {rows} at seeds {', '.join(map(str, sorted(set(group['seed']))))}")
    return "; ".join(parts)


def summary_markdown(experiment: Experiment | str, results_df: pd.DataFrame) -> str:
    """Per metric the comparison table and Kendall τ, then the claims: everything but provenance, so
    that it depends on the result values only (notebooks print it in their regression-checked cell)."""
    experiment = get_experiment(experiment) if isinstance(experiment, str) else experiment
    parts = []
    for metric in experiment.metrics:
        table = comparison_table(experiment, results_df, metric.name)
        agreement = rank_agreement(experiment, results_df, metric.name)
        arrow = "↑" if metric.higher_is_better else "↓"
        parts += [f"**{metric.label or metric.name}** ({arrow}) — rank agreement: {agreement.describe()}", "",
                  _markdown_table(table), ""]
    claims = claim_status(experiment, results_df)
    if not claims.empty:
        parts += ["Claims:", ""]
        parts += [f"- {c['claim']} — ours: **{c['ours']}**{_claim_notes(c)}; paper: {c['paper']}"
                  for c in claims.to_dict("records")]
        parts.append("")
    collapsed = _collapsed_run_labels(experiment, results_df)
    if collapsed:
        parts += [f"**Collapsed:** {', '.join(collapsed)} predicted one constant map for every validation "
                  "image at the last epoch (`val_constant_fraction` = 1 in the run's history). A constant "
                  "map scores the same after alignment whatever the model, so these seeds are counted (\"k "
                  "collapsed\") but left out of the means, the rank agreement and the claims. A collapse "
                  "can be settled before training (\"dead at initialisation\": the untrained model was "
                  "already constant on the first validation batch, `init_constant_fraction` = 1): DPT's "
                  "depth head ends in a 1×1 conv and a ReLU, and where the backbone's features are small the "
                  "decoder's default initialisation leaves that conv's output nearly constant over the "
                  "image, so its sign, set by the seed, decides whether any gradient flows "
                  "(`benchmarks/dpt_init_probe.py`; how often each stand-in starts dead: "
                  "`benchmarks/RESULTS.md`).", ""]
    return "\n".join(parts)


def _claim_notes(claim: Mapping[str, str]) -> str:
    """The per-seed count and the rows left out, in brackets. A count of one seed is left out when it repeats
    the means' verdict; rows whose means cover different seeds can disagree with it, and then it shows."""
    notes = []
    repeats_means = claim["per seed"] == ("1 of 1" if claim["ours"] == CLAIM_HOLDS else "0 of 1")
    if claim["per seed"] and not repeats_means:
        notes.append(f"per seed: holds in {claim['per seed']}")
    if claim["left out"]:
        notes.append(f"left out, every seed collapsed: {claim['left out']}")
    return f" ({'; '.join(notes)})" if notes else ""


def _collapsed_run_labels(experiment: Experiment, results_df: pd.DataFrame) -> list[str]:
    """``row (seed k[, origin])`` of each collapsed run of ``experiment``, in paper row order; the origin
    (dead at initialisation, or in training) where the run's history recorded its untrained output."""
    rows = _experiment_results(experiment, results_df)
    if rows.empty:
        return []
    runs = rows.loc[_collapsed(rows)].drop_duplicates(["row", "seed"])
    order = {r.label: i for i, r in enumerate(experiment.rows)}
    runs = runs.assign(order=runs["row"].map(order)).sort_values(["order", "seed"], kind="stable")
    at_init = runs["dead_at_init"] if "dead_at_init" in runs else pd.Series(pd.NA, index=runs.index)
    origin = {True: ", dead at initialisation", False: ", in training"}
    return [f"{row} (seed {seed}{'' if pd.isna(dead) else origin[bool(dead)]})"
            for row, seed, dead in zip(runs["row"], runs["seed"], at_init, strict=True)]


def experiment_section(experiment: Experiment, results_df: pd.DataFrame, profile: str,
                       figures_dir: Path | None, report_dir: Path) -> str:
    """The Markdown section of REPORT.md for one experiment at one profile."""
    rows = _experiment_results(experiment, results_df)
    parts = [f"### {_heading(experiment, profile)}", "",
             f"`{experiment.name}` · {experiment.paper} · {experiment.task} · "
             f"{rows[['row', 'seed']].drop_duplicates().shape[0] if not rows.empty else 0} runs", "",
             summary_markdown(experiment, results_df)]
    if figures_dir is not None:
        for png in sorted(Path(figures_dir).glob(f"{experiment.name}*.png")):
            parts += [f"![{png.stem}]({png.relative_to(report_dir).as_posix()})", ""]
    stale = stale_runs(experiment, rows, profile)
    if stale:
        parts += [f"**Out of date:** {stale} of {rows[['row', 'seed']].drop_duplicates().shape[0]} runs were "
                  "made under another declaration (recipe, row or lvit version) than the current one; "
                  f"`lvit reproduce --profile {profile}` retrains them.", ""]
    at_chance = rows_at_chance(experiment, rows, profile)
    if at_chance:
        parts += [f"**At chance:** {', '.join(at_chance)}: every seed's top-1 is at most three binomial "
                  "standard errors above chance (1 / classes, on the validation images). Such a row has "
                  "learned nothing measurable, so a claim that another row beats it holds trivially. On "
                  "LocalShapes this is expected at smoke (every row) and of the plain transformers at proxy; "
                  "what was tried to lift the latter (learning rate, warm-up, epochs, less clutter, fewer "
                  "classes) is in `benchmarks/RESULTS.md`.", ""]
    provenance = provenance_summary(rows)
    if provenance:
        parts.append("Provenance: " + "; ".join(f"{k}: {v}" for k, v in provenance.items()))
    else:
        parts.append("Provenance: no runs at this profile.")
    parts.append("")
    return "\n".join(parts)


def rows_at_chance(experiment: Experiment, rows: pd.DataFrame, profile: str) -> list[str]:
    """Classification rows whose every seed's top-1 is at most chance + 3 binomial standard errors, for a
    profile whose recipe names its class and validation-image counts (the paper's ImageNet rows do not)."""
    recipe = experiment.profiles.get(profile, {})
    if experiment.task != "classification" or rows.empty or not {"num_classes", "val_samples"} <= set(recipe):
        return []
    chance = 1 / recipe["num_classes"]
    ceiling = 100 * (chance + 3 * math.sqrt(chance * (1 - chance) / recipe["val_samples"]))
    top1 = rows[rows["metric"] == "top1"].groupby("row")["value"].max()
    return [r.label for r in experiment.rows if r.label in top1.index and top1[r.label] <= ceiling]


def stale_runs(experiment: Experiment, rows: pd.DataFrame, profile: str) -> int:
    """How many stored (row, seed) runs carry a config hash other than the one declared now."""
    from lvit.engine.run import declared_config_hash

    if rows.empty or experiment.task == "complexity" or profile not in experiment.profiles:
        return 0  # only what run_experiment trains is keyed by a declaration (not `lvit evaluate` rows)
    runs = rows.drop_duplicates(subset=["row", "seed"])
    declared = [declared_config_hash(experiment.name, r.row, profile, int(r.seed)) for r in runs.itertuples()]
    return int(sum(stored != now for stored, now in zip(runs["config_hash"], declared, strict=True)))


def load_profile_results(results_dir: Path | str, profile: str) -> pd.DataFrame:
    """Every stored result at ``profile``, each marked whether its run collapsed, as the report reads them."""
    from lvit.results import load_results, mark_collapsed

    return mark_collapsed(load_results(results_dir, profile=profile), results_dir)


def experiments_at(profile: str, results_df: pd.DataFrame,
                   experiments: Sequence[str] | None = None) -> list[Experiment]:
    """The experiments a profile's report covers: those that declare the profile, or have results at it."""
    chosen = [get_experiment(n) for n in experiments] if experiments else list_experiments()
    ran = set(results_df["experiment"]) if not results_df.empty else set()
    return [e for e in chosen if profile in e.profiles or e.name in ran]


def _profile_summary(experiments: Sequence[Experiment], results_df: pd.DataFrame, profile: str) -> str:
    """One line per experiment: rows with any result, τ on its first metric with results, claim status."""
    lines = []
    for experiment in experiments:
        tables = {m.name: comparison_table(experiment, results_df, m.name) for m in experiment.metrics}
        measured = [m for m in experiment.metrics if (_seeds_run(tables[m.name]) > 0).any()]
        primary = (measured or list(experiment.metrics))[0]
        ran = {row for table in tables.values() for row in table.loc[_seeds_run(table) > 0, "row"]}
        claims = claim_status(experiment, results_df)
        agreement = rank_agreement(experiment, results_df, primary.name)
        lines.append({
            "experiment": f"[{experiment.name}](#{_anchor(_heading(experiment, profile))})",
            "rows with results": f"{len(ran)} of {len(experiment.rows)}",
            "seeds": _seed_range(pd.concat([_seeds_run(t) for t in tables.values()])),
            "rank agreement": f"{agreement.describe()}, {primary.label or primary.name}",
            "claims on ours": _claim_counts(claims["ours"]) if len(claims) else "–",
            "out of date": stale_runs(experiment, _experiment_results(experiment, results_df), profile),
        })
    return pd.DataFrame(lines).to_markdown(index=False)


def _claim_counts(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    return ", ".join(f"{counts[s]} {s}" for s in (CLAIM_HOLDS, CLAIM_FAILS, CLAIM_NOT_ENOUGH) if s in counts)


def _heading(experiment: Experiment, profile: str) -> str:
    return f"{experiment.title} ({profile})"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def profiles_with_results(results_dir: Path | str) -> list[str]:
    """The profiles that have a directory under ``results_dir``, most faithful first (paper, proxy, smoke)."""
    from lvit.experiments import PROFILES

    faithful_first = ("pretrained", "paper", "proxy", "smoke")
    ordered = sorted(PROFILES, key=lambda p: faithful_first.index(p) if p in faithful_first else -1)
    return [p for p in ordered if (Path(results_dir) / p).is_dir()]


def write_report(results_dir: Path | str, profiles: Iterable[str] | None = None,
                 experiments: Sequence[str] | None = None) -> Path:
    """Write ``<results_dir>/REPORT.md`` and ``<results_dir>/<profile>/tables/<experiment>.tex``.

    ``profiles`` defaults to every profile directory under ``results_dir``, most faithful first
    (paper, proxy, smoke). Declared rows without results appear as missing.
    """
    results_dir = Path(results_dir)
    profiles = list(profiles_with_results(results_dir) if profiles is None else profiles)
    parts = ["# lvit report: published vs reproduced", "",
             "Every table and figure of LocalViT (Li et al.) and DPT (Ranftl et al.), the paper's number "
             "beside ours. *ours* is mean ± sample std over seeds (n = seeds). *delta* is ours − paper. "
             "At the smoke and proxy profiles the data are procedural and the models small, so absolute "
             "numbers are not comparable with the paper's: what should agree is the *ordering* of the rows. "
             "*agreement* says whether a row matches the printed value within its rounding, or moves in "
             "the paper's direction relative to the reference row (the first with both numbers), or ties "
             "with it (no direction); Kendall τ compares the whole ordering; each claim is tested on our "
             "means, then on each seed's own values (\"per seed: holds in k of n\"), and, as a check of its "
             "declaration, on the paper's. A depth seed that collapsed to a constant map is counted but left "
             "out of the means. Missing rows are shown as missing, never as zero.", "",
             "Profiles: " + (", ".join(f"[`{p}`](#profile-{p})" for p in profiles) or "none"), ""]
    if not profiles:
        parts += ["No results yet: run `lvit reproduce`.", ""]
    for profile in profiles:
        results = load_profile_results(results_dir, profile)
        covered = experiments_at(profile, results, experiments)
        figures_dir = results_dir / profile / "figures"
        parts += [f"## Profile {profile}", "", _profile_summary(covered, results, profile), ""]
        for experiment in covered:
            parts.append(experiment_section(experiment, results, profile, figures_dir, results_dir))
            tex = results_dir / profile / "tables" / f"{experiment.name}.tex"
            tex.parent.mkdir(parents=True, exist_ok=True)
            tex.write_text(latex_table(experiment, results, profile))
        linked = {e.name for e in covered}
        others = [png for png in sorted(figures_dir.glob("*.png"))
                  if not any(png.stem.startswith(name) for name in linked)]
        if others:
            parts += ["### Other figures", ""]
            parts += [f"![{png.stem}]({png.relative_to(results_dir).as_posix()})\n" for png in others]
    report = results_dir / "REPORT.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(parts))
    return report


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write results/REPORT.md (published vs ours) from results/")
    parser.add_argument("--profile", action="append", dest="profiles", metavar="P",
                        help="profile to report (repeatable); default: every profile with results")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: <project>/results")
    parser.set_defaults(func=_report_command)


def _report_command(args: argparse.Namespace) -> int:
    from lvit.experiments.base import check_profile
    from lvit.reproduce import project_root

    for profile in args.profiles or []:
        try:
            check_profile(profile)
        except ValueError as error:
            raise SystemExit(f"lvit report: {error}") from None
    results_dir = args.results_dir or project_root() / "results"
    if not Path(results_dir).is_dir():  # a mistyped path would otherwise get a report of nothing
        raise SystemExit(f"lvit report: no results directory {results_dir}")
    present = profiles_with_results(results_dir)
    absent = [p for p in args.profiles or [] if p not in present]
    if absent:  # a report of declared rows, every one "missing", written over the real one
        raise SystemExit(f"lvit report: no {', '.join(absent)} results under {results_dir} (profiles with "
                         f"results: {', '.join(present) or 'none'})")
    print(write_report(results_dir, args.profiles))
    left_out = [p for p in present if args.profiles and p not in args.profiles]
    if left_out:  # REPORT.md is one file: the sections of the profiles not asked for are gone from it
        print(f"lvit report: REPORT.md now leaves out {', '.join(left_out)}, which also have results; "
              "`lvit report` without --profile reports every profile", file=sys.stderr)
    return 0
