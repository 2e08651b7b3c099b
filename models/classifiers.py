"""Single-image classifiers: timm backbones with a fresh head for ``num_classes``, and the shared backbone helper
the other families build on.

Every classifier maps (B, 3, H, W) ImageNet-normalised RGB to logits (B, num_classes). The CNNs accept any size
(the benchmark uses 224); DeiT and Swin are fixed at 224 x 224.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from models.spec import ModelSpec, register_model
from models.weights import create_timm_model

# short project name -> timm architecture; also the feature extractors of the other families
TIMM_NAMES: dict[str, str] = {
    "deit_small": "deit_small_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "resnet50": "resnet50",
    "densenet121": "densenet121",
    "convnextv2_tiny": "convnextv2_tiny",
    "efficientnet_b0": "efficientnet_b0",
    "resnet34": "resnet34",
    "resnet18": "resnet18",
    "vit_small": "vit_small_patch16_224",
}

_FIXED_224 = "(B, 3, 224, 224) RGB, ImageNet-normalised"
_ANY_SIZE = "(B, 3, H, W) RGB, ImageNet-normalised; 224 x 224 in the benchmark, any size >= 32 works"

_CLASSIFIERS: dict[str, tuple[str, str]] = {
    "deit_small": (_FIXED_224, "DeiT-S/16 vision transformer (22M), Touvron et al. 2021"),
    "swin_tiny": (_FIXED_224, "Swin-T shifted-window transformer, window 7 (28M), Liu et al. 2021"),
    "resnet50": (_ANY_SIZE, "ResNet-50 CNN (25M), He et al. 2016"),
    "resnet18": (_ANY_SIZE, "ResNet-18 CNN (11M), He et al. 2016: the light CNN of the CPU demo"),
    "densenet121": (_ANY_SIZE, "DenseNet-121 CNN (8M), Huang et al. 2017"),
    "convnextv2_tiny": (_ANY_SIZE, "ConvNeXt V2-T CNN (28M), Woo et al. 2023"),
    "efficientnet_b0": (_ANY_SIZE, "EfficientNet-B0 CNN (5M), Tan & Le 2019"),
}


def timm_name(name: str) -> str:
    """The timm architecture behind a short name; other names are taken to be timm names already."""
    return TIMM_NAMES.get(name, name)


def backbone(name: str, pretrained: bool = False, weights: str | Path | None = None, num_classes: int = 0,
             **kwargs: Any) -> tuple[nn.Module, int]:
    """A timm model and its pooled feature size.

    ``num_classes=0`` gives a feature extractor, (B, 3, H, W) -> (B, feature_dim); a positive count gives a
    classifier with a fresh head. ``weights`` (a local file) wins over ``pretrained`` (the hub cache).
    """
    module = create_timm_model(timm_name(name), pretrained=pretrained, weights=weights, num_classes=num_classes,
                               **kwargs)
    return module, int(module.num_features)


def _make_builder(name: str):
    def build(num_classes: int, pretrained: bool = False, weights: str | Path | None = None,
              **kwargs: Any) -> nn.Module:
        if num_classes < 1:
            raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
        module, _ = backbone(name, pretrained, weights, num_classes=num_classes, **kwargs)
        return module

    build.__name__ = f"build_{name}"
    build.__doc__ = f"{name} ({timm_name(name)}) with a fresh {{num_classes}}-way head; kwargs go to timm."
    return build


for _name, (_input_spec, _description) in _CLASSIFIERS.items():
    register_model(ModelSpec(name=_name, family="classifier", input_kind="image", input_spec=_input_spec,
                             builder=_make_builder(_name), description=_description))
