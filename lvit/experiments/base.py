"""Experiment declarations: the single source of truth for every table and figure of both papers.

An :class:`Experiment` lists its rows (a model and its kwargs), the numbers the paper printed for each
row, the metrics with their direction, the seed's "Takeaway" claims it can test, and the recipe of each
profile. Notebooks, the CLI, tests and the report all read these objects; nothing else restates them.
Published numbers live here and are never written into ``results/``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def did_you_mean(name: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``valid`` to a mistyped ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# "pretrained": released checkpoints re-measured by `lvit evaluate` (no training); see experiments.pretrained.
PROFILES: tuple[str, ...] = ("smoke", "proxy", "paper", "pretrained")
# The profiles at which the tables train: what `lvit run` and `lvit reproduce` offer.
TRAINED_PROFILES: tuple[str, ...] = tuple(p for p in PROFILES if p != "pretrained")


def check_profile(profile: str) -> None:
    """Refuse a name that is not one of :data:`PROFILES`, with the closest valid one and the list."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}{did_you_mean(str(profile), PROFILES)}; "
                         f"valid profiles: {', '.join(PROFILES)}")


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    label: str = ""  # how the paper's column header reads, e.g. "Top-1 Acc. (%)"


@dataclass(frozen=True)
class Row:
    label: str  # the row as printed in the paper, e.g. "h-swish + SE-192"
    model: str  # a registered model name (lvit or timm)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    published: Mapping[str, float] = field(default_factory=dict)  # metric name -> printed value


@dataclass(frozen=True)
class Claim:
    """A sentence of the seed's Takeaway slide and a test of it on per-row values of one metric."""

    text: str
    metric: str
    holds: Callable[[Mapping[str, float]], bool]  # row label -> mean value; True when the claim holds


def strictly_best(values: Mapping[str, float], row: str, higher: bool) -> bool:
    """``row`` beats every other row outright. A tie is not a win: models that collapsed to one constant
    prediction score identically, and "best" must not hold among them."""
    others = [v for label, v in values.items() if label != row]
    if not others:
        raise KeyError(row)  # nothing to compare with: the claim has not enough rows
    return values[row] > max(others) if higher else values[row] < min(others)


@dataclass(frozen=True)
class Experiment:
    name: str  # identifier used by notebooks, CLI and results/<profile>/<name>.csv
    paper: str  # "localvit" | "dpt"
    title: str  # the table or figure as the paper names it
    task: str  # "classification" | "depth" | "segmentation" | "complexity"
    rows: tuple[Row, ...]
    metrics: tuple[Metric, ...]
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # profile -> recipe
    claims: tuple[Claim, ...] = ()
    seeds: Mapping[str, int] = field(default_factory=dict)  # profile -> seeds run by default (else 1)
    figure_metrics: tuple[str, ...] = ()  # metrics drawn as paper-vs-ours figures by the notebook

    def default_seeds(self, profile: str) -> int:
        """How many seeds (0..N-1) a run at ``profile`` takes when the caller does not say."""
        return self.seeds.get(profile, 1)

    def row(self, label: str) -> Row:
        for row in self.rows:
            if row.label == label:
                return row
        labels = [r.label for r in self.rows]
        valid = ", ".join(labels)
        raise KeyError(f"experiment {self.name!r} has no row {label!r}{did_you_mean(label, labels)}; "
                       f"valid rows: {valid}")

    def recipe(self, profile: str) -> Mapping[str, Any]:
        if profile not in self.profiles:
            valid = ", ".join(self.profiles) or "none: its rows are released checkpoints, re-measured by " \
                "`lvit evaluate`"
            raise KeyError(f"experiment {self.name!r} has no profile {profile!r}; valid profiles: {valid}")
        return self.profiles[profile]


_REGISTRY: dict[str, Experiment] = {}


def register_experiment(experiment: Experiment) -> Experiment:
    if experiment.name in _REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} is declared twice")
    _REGISTRY[experiment.name] = experiment
    return experiment


def get_experiment(name: str) -> Experiment:
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown experiment {name!r}{did_you_mean(name, list(_REGISTRY))}; "
                       f"valid experiments: {valid}")
    return _REGISTRY[name]


def list_experiments(paper: str | None = None) -> list[Experiment]:
    return [e for e in _REGISTRY.values() if paper is None or e.paper == paper]
