"""lvit model families. Importing this package registers every model with timm."""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch.nn as nn
from timm.models import model_entrypoint

# Family modules register their models with timm on import; import each one here.
from lvit.models import dpt, localvit, pvt, tnt  # noqa: F401, E402


def lvit_model_names() -> list[str]:
    """Names of the models registered by lvit itself (timm's own models excluded)."""
    return sorted(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("lvit."))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build any lvit model, or any timm model (lvit registers its models with timm).

    An unknown name raises ``ValueError`` naming the closest valid ones. lvit models are built by their
    entry point directly, because ``timm.create_model`` silently drops None-valued keywords, and None is a
    meaningful value of some (e.g. ``attn=None``: no channel attention).
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.5)
        hint = f"closest matches: {', '.join(close)}; " if close else ""
        raise ValueError(f"unknown model {name!r}; {hint}lvit models: {', '.join(lvit_model_names())}")
    if name in lvit_model_names():
        return model_entrypoint(name)(**kwargs)
    return timm.create_model(name, **kwargs)


__all__ = ["create_model", "lvit_model_names"]
