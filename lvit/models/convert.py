"""Load foreign checkpoints (official release files, plain state_dicts) into lvit models, strictly.

:func:`load_pretrained` reads a file without trusting it (``torch.load(weights_only=True)`` or
safetensors), unwraps training-checkpoint containers, converts keys with the model family's
``checkpoint_filter_fn(state_dict, model)`` and loads **all or nothing**: any missing or unexpected key,
or any shape mismatch, raises :class:`CheckpointMismatchError` listing them, and the model is unchanged.
The one difference adapted, as timm adapts it, is the input channels of the first convolution: a 3-channel
release file loads into a model built with ``in_chans=1``.

A family plugs in its conversion by defining ``checkpoint_filter_fn`` in the module of its model class
(timm's convention, e.g. :func:`lvit.models.localvit.checkpoint_filter_fn`); the filter is looked up along
the class hierarchy, so timm's own models (``deit_tiny_patch16_224``) use timm's filters.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.models import adapt_input_conv

__all__ = ["CheckpointMismatchError", "adapt_input_channels", "checkpoint_filter_for", "load_pretrained",
           "pretrained_cfg_modules", "read_checkpoint"]

StateDict = dict[str, torch.Tensor]
FilterFn = Callable[[StateDict, nn.Module], StateDict]

# Containers written by training scripts; the non-EMA weights ("model") are what official evaluations report.
_CONTAINER_KEYS = ("model", "state_dict")
_LISTED = 20  # keys listed per category in an error message
_logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model; nothing was loaded."""

    def __init__(
        self, missing: list[str], unexpected: list[str], mismatched: list[str], hint: str = ""
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [hint, _listing("missing keys", missing), _listing("unexpected keys", unexpected),
                 _listing("shape mismatches", mismatched)]
        super().__init__("checkpoint does not match the model, nothing was loaded; "
                         + "; ".join(p for p in parts if p))


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f", ... ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
    return f"{len(keys)} {what}: {', '.join(keys[:_LISTED])}{more}"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``.safetensors`` with safetensors, anything else with ``torch.load(weights_only=True)`` on CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        # Official DeiT-style checkpoints also store the training ``args`` (an argparse.Namespace), a
        # plain attribute bag that is safe to allow; everything else stays refused by weights_only.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any parse failure of an untrusted file: corrupt, truncated, not torch
        message = f"{str(path)!r} is not a PyTorch checkpoint loadable with weights_only: {error}"
        raise ValueError(message) from error


def _unwrap(checkpoint: Mapping[str, Any]) -> StateDict:
    """The tensor mapping of a training checkpoint (``{'model': ...}``) or a plain state_dict."""
    for key in _CONTAINER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if checkpoint and all(k.startswith("module.") for k in checkpoint):  # saved from DistributedDataParallel
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"not a state_dict: non-tensor entries {', '.join(map(str, not_tensors[:_LISTED]))}")
    return dict(checkpoint)


def checkpoint_filter_for(model: nn.Module) -> FilterFn | None:
    """The ``checkpoint_filter_fn`` of the module defining the model's class (or a base class), if any."""
    for cls in type(model).__mro__:
        module = sys.modules.get(cls.__module__)
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if callable(filter_fn):
            return filter_fn
    return None


def _backbone_hint(model: nn.Module, state_dict: StateDict) -> str:
    """For a model with a ``load_backbone`` (DPT) given exactly its backbone's keys (a classification
    checkpoint), say how to load them: the whole-model loader reports every key as missing or unexpected."""
    backbone = getattr(model, "backbone", None)
    if not callable(getattr(model, "load_backbone", None)) or set(state_dict) != set(backbone.state_dict()):
        return ""
    return (f"these are the keys of the backbone alone ({type(backbone).__name__}); load a "
            f"classification checkpoint into it with {type(model).__name__}.load_backbone(state_dict)")


def pretrained_cfg_modules(model: nn.Module, key: str) -> tuple[str, ...]:
    """The module names the model's timm ``pretrained_cfg[key]`` gives ("classifier", "first_conv"): a name
    or a tuple of them; none when absent."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get(key)
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The key prefixes of the model's classifier(s), as its timm ``pretrained_cfg`` names them."""
    classifiers = pretrained_cfg_modules(model, "classifier")
    if not classifiers:
        raise ValueError(f"{type(model).__name__} names no classifier (pretrained_cfg['classifier']), "
                         "so new_head has nothing to leave out")
    return tuple(f"{name}." for name in classifiers)


def _head_hint(model: nn.Module, differing: list[str]) -> str:
    """For a checkpoint that differs from the model in its classifier alone (another class count), say how
    to start fine-tuning from it."""
    try:
        heads = _classifier_prefixes(model)
    except ValueError:
        return ""
    if not all(key.startswith(heads) for key in differing):
        return ""
    return ("only the classifier differs (another class count?); to fine-tune from this checkpoint, "
            "load it with new_head=True: the model keeps its own, freshly initialised classifier")


def _rgb_weight_for_other_channels(conv: nn.Module, weight: torch.Tensor) -> bool:
    """A 3-channel (RGB) checkpoint weight for ``conv`` that only the model's other input channel count keeps
    from loading: what timm's ``adapt_input_conv`` converts (its older releases, too, take RGB weights)."""
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or weight.ndim != 4 or weight.shape[1] != 3:
        return False  # grouped or non-2D convs have no single input-channel dimension to adapt
    ours = conv.weight.shape
    return ours[1] != 3 and weight.shape[0] == ours[0] and weight.shape[2:] == ours[2:]


def adapt_input_channels(model: nn.Module, state_dict: StateDict) -> StateDict:
    """timm's ``in_chans`` adaptation: a first conv whose RGB checkpoint weight differs from the model's in
    the input channels alone gets ``adapt_input_conv`` (summed into one channel, or repeated and rescaled);
    any other difference is left to the strict check, which refuses it."""
    adapted = dict(state_dict)  # the caller's mapping stays as it was
    for name in pretrained_cfg_modules(model, "first_conv"):
        key = f"{name}.weight"
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            continue  # a cfg naming no module: the strict check reports what does not match
        if key in state_dict and _rgb_weight_for_other_channels(conv, state_dict[key]):
            adapted[key] = adapt_input_conv(conv.in_channels, state_dict[key])
            _logger.info("adapted %s from 3 to %d input channels", key, conv.in_channels)
    return adapted


def load_pretrained(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    filter_fn: FilterFn | None = None,
    new_head: bool = False,
) -> nn.Module:
    """Load an official release file or a state_dict into ``model`` strictly; returns ``model``.

    Args:
        model: the lvit/timm model to fill.
        path_or_state_dict: a ``.pth``/``.pt``/``.safetensors`` path, or a (possibly wrapped) state_dict.
        filter_fn: key conversion; default: the model family's ``checkpoint_filter_fn``.
        new_head: a fine-tuning start: the checkpoint's classifier (``pretrained_cfg['classifier']``) is
            left out and the model keeps its own (built for another class count, or none); every other key
            is still loaded strictly.

    An RGB first conv (``pretrained_cfg['first_conv']``) that differs only in its input channels (the model
    was built with another ``in_chans``) is adapted with timm's ``adapt_input_conv``, as ``timm.create_model``
    does for pretrained weights.

    Raises:
        CheckpointMismatchError: missing/unexpected keys or shape mismatches; the model is unchanged.
    """
    is_mapping = isinstance(path_or_state_dict, Mapping)
    state_dict = _unwrap(dict(path_or_state_dict) if is_mapping else read_checkpoint(path_or_state_dict))
    filter_fn = filter_fn or checkpoint_filter_for(model)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    state_dict = adapt_input_channels(model, state_dict)
    expected = model.state_dict()
    if new_head:
        heads = _classifier_prefixes(model)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
        expected = {k: v for k, v in expected.items() if not k.startswith(heads)}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or reshaped:
        hint = _backbone_hint(model, state_dict) or _head_hint(model, missing + unexpected + reshaped)
        mismatched = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                      for k in reshaped]
        raise CheckpointMismatchError(missing, unexpected, mismatched, hint)
    model.load_state_dict(state_dict, strict=not new_head)  # the keys were checked: only the head is absent
    return model
