"""MPCS: magnification-prior contrastive similarity (Chhipa et al., WACV 2023, arXiv:2203.07707).

Self-supervised pretraining on BreakHis: the two views of a positive pair are the same field at two different
magnifications (each independently augmented), and SimCLR's NT-Xent loss pulls their projections together. The
pair of magnifications is drawn by one of three strategies (as in the authors' code):

* ``ordered``: a uniformly chosen *adjacent* pair of the order 40X < 100X < 200X < 400X, lower magnification first
  ((40X, 100X), (100X, 200X) or (200X, 400X); with fewer magnifications available, adjacent in what remains);
* ``fixed``: always (200X, 400X) (:data:`FIXED_PAIR`);
* ``random``: any two distinct magnifications, in random order.

After pretraining, :func:`classifier_from_mpcs` puts a fresh linear head on the encoder, for fine-tuning or (with
a frozen encoder) linear evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.classifiers import backbone
from models.spec import ModelSpec, register_model

MAGNIFICATIONS: tuple[str, ...] = ("40X", "100X", "200X", "400X")
PAIR_STRATEGIES: tuple[str, ...] = ("ordered", "fixed", "random")
FIXED_PAIR: tuple[str, str] = ("200X", "400X")
PROJECTION_DIM = 128


class MPCSModel(nn.Module):
    """Encoder + projection head (Linear-ReLU-Linear to 128); ``forward`` -> L2-normalised projection (B, 128)."""

    def __init__(self, encoder: nn.Module, feature_dim: int, *, hidden_dim: int | None = None,
                 projection_dim: int = PROJECTION_DIM) -> None:
        super().__init__()
        hidden_dim = hidden_dim or feature_dim
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.projection = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, projection_dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.projection(self.encoder(x)), dim=-1)


class MPCSClassifier(nn.Module):
    """A pretrained MPCS encoder + a fresh linear head: (B, 3, H, W) -> logits (B, C).

    With ``freeze_encoder`` the encoder gets no gradients and stays in eval mode (batch-norm statistics fixed),
    which is the linear-evaluation protocol.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int, *, freeze_encoder: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> MPCSClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def classifier_from_mpcs(model: MPCSModel, num_classes: int, *, freeze_encoder: bool = False,
                         dropout: float = 0.0) -> MPCSClassifier:
    """The encoder of ``model`` (shared, not copied) with a fresh ``num_classes``-way linear head."""
    return MPCSClassifier(model.encoder, model.feature_dim, num_classes, freeze_encoder=freeze_encoder,
                          dropout=dropout)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR's NT-Xent loss for B positive pairs (z1[i], z2[i]), both directions, mean over the 2B anchors.

    Each of the 2B projections is an anchor whose positive is its partner and whose negatives are the other
    2B - 2 projections; inputs are L2-normalised here, so raw projections are fine.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two (B, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, targets)


def sample_pair(available_mags: Sequence[str], strategy: str,
                rng: random.Random | np.random.Generator | None = None) -> tuple[str, str]:
    """Two distinct magnifications of one field for a positive pair, by ``strategy`` (see the module doc)."""
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"unknown pair strategy {strategy!r}; valid: {', '.join(PAIR_STRATEGIES)}")
    unknown = [m for m in available_mags if m not in MAGNIFICATIONS]
    if unknown:
        raise ValueError(f"unknown magnifications {unknown}; expected some of {', '.join(MAGNIFICATIONS)}")
    mags = [m for m in MAGNIFICATIONS if m in set(available_mags)]
    if len(mags) < 2:
        raise ValueError(f"a pair needs two distinct magnifications, got {list(available_mags)}")
    rng = rng if rng is not None else random.Random()
    if strategy == "fixed":
        if not set(FIXED_PAIR) <= set(mags):
            raise ValueError(f"the fixed pair {FIXED_PAIR} needs both magnifications, got {mags}")
        return FIXED_PAIR
    if strategy == "ordered":
        i = _randint(rng, len(mags) - 1)
        return mags[i], mags[i + 1]
    i = _randint(rng, len(mags))
    j = _randint(rng, len(mags) - 1)
    return mags[i], mags[j + (j >= i)]


def _randint(rng: random.Random | np.random.Generator, n: int) -> int:
    """Uniform integer in [0, n) from either kind of generator."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    return rng.randrange(n)


def _make_builder(name: str):
    def build(num_classes: int = 0, pretrained: bool = False, weights: str | Path | None = None,
              hidden_dim: int | None = None, projection_dim: int = PROJECTION_DIM, **kwargs: Any) -> MPCSModel:
        encoder, dim = backbone(name, pretrained, weights, num_classes=0, **kwargs)
        return MPCSModel(encoder, dim, hidden_dim=hidden_dim, projection_dim=projection_dim)

    build.__name__ = f"build_mpcs_{name}"
    build.__doc__ = (f"MPCS pretraining model on {name}; ``num_classes`` is ignored (the output is the "
                     f"{PROJECTION_DIM}-d projection; classifier_from_mpcs makes the classifier).")
    return build


for _name, _params in (("resnet50", "25M"), ("efficientnet_b0", "5M")):
    register_model(ModelSpec(
        name=f"mpcs_{_name}", family="mpcs", input_kind="image",
        input_spec="(B, 3, H, W) RGB, ImageNet-normalised; 224 x 224 in the benchmark; output (B, 128) L2-normalised",
        builder=_make_builder(_name),
        description=f"MPCS contrastive pretraining, {_name} encoder ({_params}) + 128-d projection "
                    f"(Chhipa et al. 2023)"))
