"""Tile features for MIL: encode every tile of a slide once and cache the result in the slide store.

Features live beside the tiles, at ``<slide>/features/<scale>/<extractor>`` (N, D) float16, so bags are read
without touching the pixels again. A cached array whose row count matches the tiles is reused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def features_key(slide_id: str, scale: str, extractor: str) -> str:
    return f"{slide_id}/features/{scale}/{extractor}"


def extract_slide_features(store_path: str | Path, slide_id: str, scale: str, extractor: str = "resnet50", *,
                           weights: str | None = None, pretrained: bool = False, batch_size: int = 64,
                           device: str = "cpu", model=None) -> np.ndarray:
    """(N, D) features of the tiles of ``slide_id`` at ``scale``; computed once, then read from the store."""
    import torch
    import zarr

    from models.mil import feature_extractor
    from pipelines.augment import normalize

    group = zarr.open_group(str(store_path), mode="r+")
    tiles = group[f"{slide_id}/tiles/{scale}"]
    key = features_key(slide_id, scale, extractor)
    if key in group and group[key].shape[0] == tiles.shape[0]:
        return group[key][:].astype(np.float32)
    if model is None:
        model, _ = feature_extractor(extractor, pretrained=pretrained, weights=weights)
    model = model.to(device).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, tiles.shape[0], batch_size):
            batch = torch.from_numpy(tiles[start:start + batch_size]).to(device).permute(0, 3, 1, 2)
            chunks.append(model(normalize(batch.float() / 255.0)).float().cpu().numpy())
    feats = (np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)).astype(np.float16)
    parent = group.require_group(f"{slide_id}/features/{scale}")
    parent.create_array(extractor, data=feats, chunks=(max(1, len(feats)), feats.shape[1] or 1), overwrite=True)
    log.info("%s: %d tile features (%s, %d-d) cached", slide_id, len(feats), extractor, feats.shape[1])
    return feats.astype(np.float32)  # the same values a later read of the cache gives
