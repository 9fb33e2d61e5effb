"""Every experiment of both papers, declared once. Importing this package registers them all."""

from lvit.experiments import (
    dpt,  # noqa: E402, F401  (declares the DPT experiments)
    localvit,  # noqa: E402, F401  (declares the LocalViT experiments)
    pretrained,  # noqa: E402, F401  (released checkpoints' expected numbers)
)
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
