"""The committed result store is consistent with itself: every classification result row cites a stored
run (``shared_run``) whose last history entry holds the row's value, every trained row's own history file
ends at its epoch with its values, and every dense row's backbone run (``backbone_run``) is stored. A run
record overwritten after rows cited it (as the 5f8407f session's retrained runs did, repaired in 72e11af)
fails here."""

import json

import pandas as pd
import pytest

from lvit import results as store
from lvit.engine.run import TRAINING_TASKS
from lvit.experiments import get_experiment
from lvit.reproduce import project_root

PROFILES_STORED = [p for p in ("smoke", "proxy") if (project_root() / "results" / p).is_dir()]


def _history_value(last: dict, metric: str) -> float | None:
    value = last.get("train_loss") if metric == "train_loss" else last.get(f"val_{metric}")
    return None if value is None else float(value)


@pytest.mark.parametrize("profile", PROFILES_STORED)
def test_each_row_equals_the_run_it_cites(profile):
    rows = store.latest_results(store.load_results(project_root() / "results", profile))
    cited = rows[rows["shared_run"] != ""]
    assert len(cited), "no classification rows to check"
    checked = 0
    for run, group in cited.groupby("shared_run"):
        record = json.loads(store.shared_run_path(project_root() / "results", profile, run).read_text())
        last = record["history"][-1]
        assert (group["seed"] == record["seed"]).all(), run
        for metric, value in zip(group["metric"], group["value"], strict=True):
            expected = _history_value(last, metric)
            if expected is not None:  # params/FLOPs are counted, not trained
                assert value == pytest.approx(expected, abs=1e-9), (run, metric)
                checked += 1
    assert checked >= len(cited["shared_run"].unique())


@pytest.mark.parametrize("profile", PROFILES_STORED)
def test_each_backbone_run_named_is_stored(profile):
    rows = store.load_results(project_root() / "results", profile)
    named = pd.unique(rows.loc[rows["backbone_run"] != "", "backbone_run"])
    for run in named:
        assert store.shared_run_path(project_root() / "results", profile, run).exists(), run


@pytest.mark.parametrize("profile", PROFILES_STORED)
def test_each_trained_row_ends_its_history(profile):
    root = project_root() / "results"
    rows = store.latest_results(store.load_results(root, profile))
    trained = rows[rows["experiment"].map(lambda name: get_experiment(name).task in TRAINING_TASKS)]
    assert len(trained)
    for (experiment, row, seed), group in trained.groupby(["experiment", "row", "seed"]):
        history = pd.read_csv(store.history_path(root, profile, experiment, row, seed))
        last = history.iloc[-1].to_dict()
        assert int(last["epoch"]) == int(group["epoch"].iloc[0]), (experiment, row, seed)
        for metric, value in zip(group["metric"], group["value"], strict=True):
            expected = _history_value(last, metric)
            if expected is not None:  # dense metrics are evaluated after training, not logged per epoch
                assert value == pytest.approx(expected, abs=1e-9), (experiment, row, seed, metric)
