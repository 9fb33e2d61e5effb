"""Every experiment of both papers, declared once. Importing this package registers them all."""

from lvit.experiments import dpt  # noqa: F401  (declares the DPT experiments)
from lvit.experiments.base import (
    PROFILES,
    Claim,
    Experiment,
    Metric,
    Row,
    get_experiment,
    list_experiments,
    register_experiment,
)

__all__ = [
    "PROFILES",
    "Claim",
    "Experiment",
    "Metric",
    "Row",
    "get_experiment",
    "list_experiments",
    "register_experiment",
]
