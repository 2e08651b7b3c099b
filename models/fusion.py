"""Multi-magnification fusion: the same field seen at 1-4 magnifications, one shared CNN, attention across scales.

``fusion_effnet_b0``: every input image goes through ONE shared EfficientNet-B0 (1280-d pooled features); each
feature is projected to ``embed_dim`` and tagged with a learned embedding of its magnification; the tokens attend
to one another (multi-head attention, residual + LayerNorm), are averaged, and a residual MLP classifies them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.classifiers import backbone
from models.spec import ModelSpec, register_model

MAX_INPUTS = 4


class MagnificationFusion(nn.Module):
    """(B, K, 3, H, W) images of one field at K <= ``n_inputs`` magnifications -> logits (B, num_classes).

    ``mag_index`` (K,) says which magnification embedding each input slot uses (default ``0..K-1``, i.e. the
    inputs are the first K magnifications in the order the model was trained with, e.g. 40X, 100X, 200X, 400X).
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int, *, n_inputs: int = MAX_INPUTS,
                 embed_dim: int = 256, num_heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if not 1 <= n_inputs <= MAX_INPUTS:
            raise ValueError(f"n_inputs must be in 1..{MAX_INPUTS}, got {n_inputs}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.n_inputs = n_inputs
        self.encoder = encoder
        self.project = nn.Linear(feature_dim, embed_dim)
        self.mag_embedding = nn.Parameter(torch.zeros(n_inputs, embed_dim))
        nn.init.trunc_normal_(self.mag_embedding, std=0.02)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(embed_dim, embed_dim))
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor, mag_index: Tensor | None = None,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, C); with ``return_attention`` also the head-averaged attention weights (B, K, K), row i
        being how much input i attends to each input."""
        if x.dim() != 5:
            raise ValueError(f"expected (B, K, 3, H, W) images, got shape {tuple(x.shape)}")
        b, k = x.shape[:2]
        if not 1 <= k <= self.n_inputs:
            raise ValueError(f"this model takes 1..{self.n_inputs} magnifications, got K={k}")
        if mag_index is None:
            mag_index = torch.arange(k, device=x.device)
        elif mag_index.shape != (k,):
            raise ValueError(f"mag_index must have shape ({k},), got {tuple(mag_index.shape)}")
        features = self.encoder(x.flatten(0, 1)).reshape(b, k, -1)
        tokens = self.project(features) + self.mag_embedding[mag_index]
        attended, weights = self.attention(tokens, tokens, tokens, need_weights=return_attention,
                                           average_attn_weights=True)
        tokens = self.norm(tokens + attended)
        pooled = tokens.mean(dim=1)
        logits = self.head(pooled + self.mlp(pooled))
        if return_attention:
            return logits, weights
        return logits


def build_fusion_effnet_b0(num_classes: int, pretrained: bool = False, weights: str | Path | None = None,
                           n_inputs: int = MAX_INPUTS, embed_dim: int = 256, num_heads: int = 4,
                           dropout: float = 0.1, **kwargs: Any) -> MagnificationFusion:
    """Fusion over a shared EfficientNet-B0; ``pretrained`` / ``weights`` initialise the encoder."""
    encoder, dim = backbone("efficientnet_b0", pretrained, weights, num_classes=0, **kwargs)
    return MagnificationFusion(encoder, dim, num_classes, n_inputs=n_inputs, embed_dim=embed_dim,
                               num_heads=num_heads, dropout=dropout)


register_model(ModelSpec(
    name="fusion_effnet_b0", family="fusion", input_kind="multi_image",
    input_spec="(B, K, 3, H, W) one field at K=1..4 magnifications (40X, 100X, 200X, 400X order), RGB, "
               "ImageNet-normalised; 224 x 224 in the benchmark",
    builder=build_fusion_effnet_b0,
    description="shared EfficientNet-B0 + magnification embeddings + cross-scale attention + residual MLP head"))
