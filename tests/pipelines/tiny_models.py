"""Test-only models registered under ``*_test`` names: a tiny CNN, and one whose loss is always NaN."""

from __future__ import annotations

from torch import nn

from models.spec import MODELS, ModelSpec, register_model


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int, poison: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, num_classes)
        self.poison = poison

    def forward(self, x):
        out = self.head(self.body(x))
        return out * float("nan") if self.poison else out


for _name, _poison in (("tiny_cnn_test", False), ("nan_cnn_test", True)):
    if _name not in MODELS:
        register_model(ModelSpec(_name, "classifier", "image", "(B, 3, H, W)",
                                 lambda num_classes, pretrained=False, weights=None, _p=_poison, **kw:
                                 TinyCNN(num_classes, _p), "test-only tiny CNN"))
