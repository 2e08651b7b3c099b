"""The model registry: every model of the project by name, how to build it and what it takes.

    from models.registry import MODELS, build_model, model_table

    model = build_model("swin_tiny", num_classes=8)                      # from scratch
    model = build_model("resnet50", 2, weights="resnet50.safetensors")   # local weights (head skipped if it differs)
    MODELS.names("mpcs_*")                                               # ['mpcs_resnet50', 'mpcs_efficientnet_b0']

Importing this module imports the family modules, which register their models; it has no other side effect.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the family modules register into MODELS when imported; the import order is the registry (and table) order
from models import classifiers, fusion, mil, mpcs  # noqa: F401
from models.spec import FAMILIES, INPUT_KINDS, MODELS, ModelSpec, register_model
from models.weights import WeightsError, load_weights

__all__ = ["FAMILIES", "INPUT_KINDS", "MODELS", "ModelSpec", "WeightsError", "build_model", "count_params",
           "load_weights", "model_table", "register_model"]

log = logging.getLogger(__name__)


def build_model(name: str, num_classes: int, *, pretrained: bool = False, weights: str | Path | None = None,
                **kwargs: Any) -> nn.Module:
    """The model registered as ``name``, for ``num_classes`` classes.

    ``weights``: a local ``.safetensors`` / torch state-dict file (wins over ``pretrained``); ``pretrained``: timm
    weights from the hub cache (a :class:`WeightsError` says to pass ``--weights PATH`` when they cannot be had).
    Extra keyword arguments go to the family's builder (e.g. ``n_inputs`` for fusion, ``feature_extractor`` for
    MIL). An unknown name raises ``KeyError`` listing the valid names.
    """
    spec = MODELS.get(name)
    model = spec.builder(num_classes=num_classes, pretrained=pretrained, weights=weights, **kwargs)
    log.debug("built %s (%s) for %d classes", name, spec.family, num_classes)
    return model


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not), shared tensors counted once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def model_table(num_classes: int = 8, pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered model (name, family, input_kind, input_spec, params, description).

    Parameter counts are for ``num_classes`` classes and come from a model built on the ``meta`` device, so no
    memory is allocated and no weights are loaded.
    """
    rows = []
    for name in MODELS.names(pattern):
        spec = MODELS.get(name)
        with torch.device("meta"):
            params = count_params(spec.builder(num_classes=num_classes))
        rows.append({"name": name, "family": spec.family, "input_kind": spec.input_kind,
                     "input_spec": spec.input_spec, "params": params, "description": spec.description})
    return rows
