"""Layer-unfreezing schedules for fine-tuning: which parameters of a classifier train.

- ``full``: every parameter (training from scratch, or full fine-tuning);
- ``last_block``: the last stage of the backbone, the final norm and the classifier head;
- ``head``: the classifier head only (linear probing of the backbone's features).

The other parameters get ``requires_grad = False`` (and are left out of the optimizer), and the frozen modules stay
in eval mode while the rest trains (:func:`apply_frozen_eval`): their BatchNorm running statistics do not follow the
training data and their dropout is off, so a frozen encoder is truly fixed (the linear-evaluation protocol).

The parts are named per timm family in :data:`PARTS` (module-name prefixes); a model that is not listed can only
train ``full``, and asking for another schedule raises a ValueError that lists the models that can.
"""

from __future__ import annotations

from typing import Any

from histo_bench.errors import ConfigError

#: The schedules, the default first.
UNFREEZE: tuple[str, ...] = ("full", "last_block", "head")

#: model -> (head prefixes, last-block prefixes) of ``named_parameters`` names.
PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "resnet50": (("fc.",), ("layer4.",)),
    "resnet18": (("fc.",), ("layer4.",)),
    "densenet121": (("classifier.",), ("features.denseblock4.", "features.norm5.")),
    "convnextv2_tiny": (("head.",), ("stages.3.",)),
    "efficientnet_b0": (("classifier.",), ("blocks.6.", "conv_head.", "bn2.")),
    "deit_small": (("head.",), ("blocks.11.", "norm.", "fc_norm.")),
    "swin_tiny": (("head.",), ("layers.3.", "norm.")),
    # fusion: the head is everything after the shared encoder; the last block adds the encoder's last stage
    "fusion_effnet_b0": (("project.", "mag_embedding", "attention.", "norm.", "mlp.", "head."),
                         ("encoder.blocks.6.", "encoder.conv_head.", "encoder.bn2.")),
}


def check_unfreeze(unfreeze: str) -> str:
    """``unfreeze`` when it names a schedule, else a ValueError listing them."""
    if unfreeze not in UNFREEZE:
        raise ConfigError(f"unknown unfreeze schedule {unfreeze!r}: use one of {', '.join(UNFREEZE)}")
    return unfreeze


def trainable_prefixes(model_name: str, unfreeze: str) -> tuple[str, ...] | None:
    """The parameter-name prefixes that train under ``unfreeze`` (None: all of them)."""
    check_unfreeze(unfreeze)
    if unfreeze == "full":
        return None
    if model_name not in PARTS:
        raise ConfigError(f"--unfreeze {unfreeze} is defined for {', '.join(PARTS)}; {model_name} can only train "
                         "with --unfreeze full")
    head, last = PARTS[model_name]
    return head if unfreeze == "head" else head + last


def apply_unfreeze(model: Any, model_name: str, unfreeze: str) -> dict[str, int]:
    """Set ``requires_grad`` on ``model``'s parameters for the schedule; returns trainable / total counts."""
    prefixes = trainable_prefixes(model_name, unfreeze)
    trainable = total = 0
    for name, param in model.named_parameters():
        keep = prefixes is None or name.startswith(prefixes)
        param.requires_grad_(keep)
        total += param.numel()
        trainable += param.numel() if keep else 0
    if trainable == 0:
        raise ConfigError(f"--unfreeze {unfreeze} leaves no trainable parameter in {model_name} (the part names "
                         "in pipelines.training.unfreeze.PARTS do not match this model)")
    return {"trainable": trainable, "total": total}


def apply_frozen_eval(model: Any, unfreeze: str) -> None:
    """Put every frozen module of ``model`` (it has parameters, none of which train) in eval mode; call it after each
    ``model.train()``. Nothing changes under ``full``. Modules without parameters (a head's dropout) are left alone."""
    if check_unfreeze(unfreeze) == "full":
        return
    for module in model.modules():  # parents first: a frozen parent's eval() covers its children
        if module.training:
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
