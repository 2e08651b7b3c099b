"""Attention-based multiple-instance learning (Ilse, Tomczak & Welling, ICML 2018) over precomputed tile features.

A slide is a bag of N tile feature vectors (from :func:`feature_extractor`); the model embeds each tile, scores it
with an attention network, and classifies the attention-weighted mean:

    simple:  a = softmax_n( w^T tanh(V h_n) )
    gated:   a = softmax_n( w^T (tanh(V h_n) * sigmoid(U h_n)) )

Bags of different sizes are padded to one N and batched with a ``mask`` (True = a real tile, False = padding);
padded tiles get exactly zero attention.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from models.classifiers import backbone
from models.spec import ModelSpec, register_model
from models.weights import load_weights

# feature extractor name -> feature size of its pooled output
FEATURE_DIMS: dict[str, int] = {"resnet50": 2048, "resnet34": 512, "vit_small": 384}


#: Seed of a randomly initialised extractor: the same random encoder on every call, so features cached from one
#: store and computed on another (inference) come from the same function.
EXTRACTOR_SEED = 0


def feature_extractor(name: str, pretrained: bool = False,
                      weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """A tile encoder (B, 3, H, W) -> (B, D) for building bags: timm resnet50 / resnet34 / vit_small_patch16_224
    with no head. Without ``weights`` / ``pretrained`` it is randomly initialised from :data:`EXTRACTOR_SEED`
    (the global RNG is left untouched). The ViT takes any tile size (its position embedding is interpolated)."""
    if name not in FEATURE_DIMS:
        raise KeyError(f"unknown feature extractor {name!r}; valid names: {', '.join(FEATURE_DIMS)}")
    kwargs = {"dynamic_img_size": True, "dynamic_img_pad": True} if name.startswith("vit") else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EXTRACTOR_SEED)
        return backbone(name, pretrained, weights, num_classes=0, **kwargs)


class AttentionMIL(nn.Module):
    """Bag (N, D) or batched bags (B, N, D) -> ``(logits (B, C), attention (B, N))``."""

    def __init__(self, in_dim: int, num_classes: int, *, hidden_dim: int = 256, attn_dim: int = 128,
                 dropout: float = 0.25, gated: bool = False) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, attn_dim, num_classes) < 1:
            raise ValueError("in_dim, hidden_dim, attn_dim and num_classes must all be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.gated = gated
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Linear(hidden_dim, attn_dim)
        self.attn_u = nn.Linear(hidden_dim, attn_dim) if gated else None
        self.attn_w = nn.Linear(attn_dim, 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))

    def attention_scores(self, h: Tensor) -> Tensor:
        """Unnormalised attention logits (B, N) of embedded tiles h (B, N, hidden_dim)."""
        a = torch.tanh(self.attn_v(h))
        if self.attn_u is not None:
            a = a * torch.sigmoid(self.attn_u(h))
        return self.attn_w(a).squeeze(-1)

    def forward(self, bag: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if bag.dim() == 2:
            bag = bag.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        if bag.dim() != 3:
            raise ValueError(f"expected a bag (N, D) or bags (B, N, D), got shape {tuple(bag.shape)}")
        if mask is not None:
            if mask.shape != bag.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match bags {tuple(bag.shape[:2])}")
            mask = mask.to(torch.bool)
            if not bool(mask.any(dim=1).all()):
                raise ValueError("every bag needs at least one unmasked tile")
        h = self.embed(bag)
        scores = self.attention_scores(h)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        pooled = torch.einsum("bn,bnd->bd", attention, h)
        return self.classifier(pooled), attention


def _make_builder(gated: bool):
    def build(num_classes: int, pretrained: bool = False, weights: str | Path | None = None,
              feature_extractor: str = "resnet50", in_dim: int | None = None, hidden_dim: int = 256,
              attn_dim: int = 128, dropout: float = 0.25) -> AttentionMIL:
        if pretrained:
            raise ValueError("attention MIL works on precomputed features and has no pretrained weights; "
                             "pretrained applies to models.mil.feature_extractor(...)")
        if feature_extractor not in FEATURE_DIMS:
            raise KeyError(f"unknown feature extractor {feature_extractor!r}; valid names: {', '.join(FEATURE_DIMS)}")
        model = AttentionMIL(in_dim or FEATURE_DIMS[feature_extractor], num_classes, hidden_dim=hidden_dim,
                             attn_dim=attn_dim, dropout=dropout, gated=gated)
        model.feature_extractor = feature_extractor
        return load_weights(model, weights) if weights is not None else model

    build.__name__ = "build_abmil_gated" if gated else "build_abmil"
    build.__doc__ = ("Attention MIL; ``in_dim`` defaults to the feature size of ``feature_extractor`` (give it for "
                     "features from another encoder); ``weights`` restores a saved MIL model.")
    return build


_BAG_SPEC = "(B, N, D) or (N, D) tile features (D: 2048 resnet50 | 512 resnet34 | 384 vit_small) + optional mask (B, N)"
register_model(ModelSpec(name="abmil", family="mil", input_kind="bag", input_spec=_BAG_SPEC,
                         builder=_make_builder(gated=False),
                         description="attention MIL, a = softmax(w^T tanh(V h)) (Ilse et al. 2018)"))
register_model(ModelSpec(name="abmil_gated", family="mil", input_kind="bag", input_spec=_BAG_SPEC,
                         builder=_make_builder(gated=True),
                         description="gated attention MIL, a = softmax(w^T (tanh(V h) * sigmoid(U h))) "
                                     "(Ilse et al. 2018)"))
