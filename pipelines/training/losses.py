"""Classification losses chosen by name: cross-entropy and the focal loss (Lin et al., ICCV 2017).

    focal(p_t) = -(1 - p_t)^gamma * log(p_t),   averaged over the batch

where ``p_t`` is the softmax probability of the true class. ``gamma = 0`` is exactly the cross-entropy; a larger
``gamma`` down-weights examples the model already gets right, which helps when one class dominates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from histo_bench.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Mean focal loss of ``logits`` (B, C) against integer ``target`` (B,)."""

    if gamma < 0:
        raise ConfigError(f"gamma must be >= 0, got {gamma}")
    log_p = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
    return (-(1.0 - log_p.exp()).pow(gamma) * log_p).mean()


def _cross_entropy(logits: Tensor, target: Tensor, gamma: float = 0.0) -> Tensor:

    return torch.nn.functional.cross_entropy(logits, target)


_LOSSES = {"ce": _cross_entropy, "focal": focal_loss}
#: The loss names, default first.
LOSSES: tuple[str, ...] = tuple(_LOSSES)


def check_loss(name: str) -> str:
    """``name`` when it names a loss, else a ValueError listing them."""
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return name


def classification_loss(name: str, logits: Tensor, target: Tensor, *, gamma: float = 2.0) -> Tensor:
    """``ce`` (cross-entropy; ``gamma`` unused) or ``focal`` (with ``gamma``) of ``logits`` (B, C) against
    ``target`` (B,)."""
    return _LOSSES[check_loss(name)](logits, target, gamma)
