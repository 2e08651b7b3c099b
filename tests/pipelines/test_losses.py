"""Losses by name: the focal loss against a hand computation, and cross-entropy as its gamma = 0 case."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.training.losses import LOSSES, classification_loss, focal_loss


def test_focal_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0])
    # p_t = softmax of the true class: e^2 / (e^2 + 1) and 1 / (1 + e)
    p1, p2 = math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)
    hand = (-(1 - p1) ** 2 * math.log(p1) - (1 - p2) ** 2 * math.log(p2)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(hand, rel=1e-6)
    assert classification_loss("focal", logits, target, gamma=2.0).item() == pytest.approx(hand, rel=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, target).item()
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ce, rel=1e-6)
    assert classification_loss("ce", logits, target).item() == pytest.approx(ce, rel=1e-6)
    assert focal_loss(logits, target, gamma=2.0).item() < ce  # easy examples are down-weighted


def test_focal_loss_has_gradients_and_errors():
    logits = torch.randn(4, 3, requires_grad=True)
    focal_loss(logits, torch.tensor([0, 1, 2, 1])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert LOSSES == ("ce", "focal")
    with pytest.raises(ValueError, match="unknown loss 'hinge'; valid: ce, focal"):
        classification_loss("hinge", logits, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        focal_loss(logits, torch.tensor([0, 1, 2, 1]), gamma=-1)
