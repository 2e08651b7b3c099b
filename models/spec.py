"""The model registry object and the record each model registers; kept apart from ``models.registry`` so the
family modules can register into it without importing each other in a cycle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from histo_bench.registry import Registry

Family = Literal["classifier", "fusion", "mil", "mpcs"]
InputKind = Literal["image", "multi_image", "bag"]
FAMILIES: tuple[str, ...] = ("classifier", "fusion", "mil", "mpcs")
INPUT_KINDS: tuple[str, ...] = ("image", "multi_image", "bag")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    name: registry name (``swin_tiny``), the ``--model`` value and the result column.
    family: ``classifier`` | ``fusion`` | ``mil`` | ``mpcs``; tells the pipelines how to train it.
    input_kind: ``image`` (B, 3, H, W) | ``multi_image`` (B, K, 3, H, W) | ``bag`` (B, N, D) tile features.
    input_spec: what the forward expects, in words, e.g. ``"(B, 3, 224, 224) RGB, ImageNet-normalised"``.
    builder: ``builder(num_classes=..., pretrained=..., weights=..., **kwargs) -> nn.Module``.
    description: one line for tables and ``--help``.
    """

    name: str
    family: Family
    input_kind: InputKind
    input_spec: str
    builder: Callable[..., nn.Module]
    description: str

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"model name must be snake_case, got {self.name!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if not callable(self.builder):
            raise ValueError(f"builder of {self.name!r} is not callable")


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to :data:`MODELS` under its name (the registry's ``register`` decorator, applied to a record)."""
    return MODELS.register(spec.name)(spec)
