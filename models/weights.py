"""Weights from a local file or, when asked, from timm's hub cache; never a silent download in tests or demos.

A weight file is a ``.safetensors`` file or a torch state dict (``torch.load(..., weights_only=True)``), bare or
wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``. ``module.`` prefixes (DataParallel / DDP) are stripped, and
a file saved from a wrapper model (``encoder.conv1.weight``) loads into the bare backbone (``conv1.weight``) and the
other way round. Tensors whose shapes differ, typically the head of a model trained for another class count, are
skipped and listed in the log; a file in which nothing matches is an error that names the file.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histo_bench.errors import HistoBenchError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class WeightsError(HistoBenchError, RuntimeError):
    """Weights that cannot be had or used: one line that says which file or model and what to do."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file, unwrapped and with ``module.`` prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: any reader error means the same to the user
        raise WeightsError(f"cannot read weights from {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    for key in WRAPPER_KEYS:
        if isinstance(raw, Mapping) and key in raw and isinstance(raw[key], Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{path} holds a {type(raw).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path} holds no tensors")
    return {_strip(k, "module."): v for k, v in tensors.items()}


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load the tensors of ``path`` that fit ``module`` (in place); returns ``module``.

    Shape mismatches (a head for another class count) are skipped and logged; raises :class:`WeightsError` when no
    tensor of the file fits the module.
    """
    path = Path(path)
    source = read_state_dict(path)
    target = module.state_dict()
    mapped = _best_mapping(source, target)
    fits = {k: v for k, v in mapped.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    skipped = sorted(k for k in mapped if k in target and k not in fits)
    if not fits:
        raise WeightsError(f"no tensor in {path} fits {type(module).__name__} "
                           f"(file keys look like {sorted(source)[:3]}, model keys like {sorted(target)[:3]})")
    module.load_state_dict(fits, strict=False)
    missing = sorted(set(target) - set(fits) - set(skipped))
    unused = sorted(set(mapped) - set(target))
    log.info("loaded %d/%d tensors of %s from %s", len(fits), len(target), type(module).__name__, path)
    if skipped:
        log.info("skipped %d tensors whose shape differs (e.g. a head for another class count): %s",
                 len(skipped), ", ".join(skipped))
    if missing:
        log.warning("%d tensors of the model are not in %s and keep their initial values: %s",
                    len(missing), path, _short(missing))
    if unused:
        log.info("%d tensors of %s are not used by the model: %s", len(unused), path, _short(unused))
    return module


def create_timm_model(timm_name: str, *, pretrained: bool = False, weights: str | Path | None = None,
                      **kwargs: Any) -> nn.Module:
    """``timm.create_model(timm_name, **kwargs)`` with weights from a local file (``weights``, which wins) or from
    the hub cache (``pretrained``); an unreachable hub or an empty cache raises :class:`WeightsError`. timm is
    imported here, not with the module: with torchvision and ``torch._dynamo`` it costs ~3 s of start-up, which
    the command line, the tiny test models and the MIL heads on cached features do not need."""
    import timm

    if weights is not None:
        if pretrained:
            log.info("weights file given: loading %s from %s, not from the hub", timm_name, weights)
        return load_weights(timm.create_model(timm_name, pretrained=False, **kwargs), weights)
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except _hub_errors() as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise WeightsError(f"pretrained weights for {timm_name} are not available offline ({reason}); "
                           f"download them where there is network and pass --weights PATH") from exc


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exception types the hub raises when it is offline or the cache lacks a file (network client varies)."""
    errors: list[type[BaseException]] = [OSError]
    for module_name, attr in (("huggingface_hub.errors", "HfHubHTTPError"), ("httpx", "HTTPError"),
                              ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _best_mapping(source: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` re-keyed to match ``target`` best: as is, with a shared first prefix removed (``encoder.``), or
    with the model's own wrapper prefix added (backbone file into a wrapper model)."""
    candidates = [source]
    source_prefixes = {k.split(".", 1)[0] for k in source if "." in k}
    if len(source_prefixes) == 1 and all("." in k for k in source):
        prefix = next(iter(source_prefixes)) + "."
        candidates.append({_strip(k, prefix): v for k, v in source.items()})
    for prefix in sorted({k.split(".", 1)[0] + "." for k in target if "." in k}):
        candidates.append({prefix + k: v for k, v in source.items()})
    return max(candidates, key=lambda c: sum(1 for k, v in c.items() if k in target and v.shape == target[k].shape))


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
