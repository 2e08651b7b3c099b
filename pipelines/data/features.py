"""Tile features for MIL: encode every tile of a slide once and cache the result in the slide store.

Features live beside the tiles, at ``<slide>/features/<scale>/<extractor>`` (N, D) float16, so bags are read
without touching the pixels again. The array's ``weights`` attribute says which encoder made it (the seeded random
initialisation, or a weights file by name and content hash): a cached array is reused only when its row count
matches the tiles and it came from the same encoder; otherwise it is recomputed. The tiles' shard files are checked
before they are encoded (a missing one is an error naming it, never zeros), and a full disk while the array is
written is one error naming it (:mod:`ingest.disk`), with nothing half-written left behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import zarr

from histo_bench.files import replace_dir
from ingest.disk import raise_if_environment, writing
from ingest.locks import WorkLock
from ingest.slide_store import check_slide_shards
from models.mil import EXTRACTOR_SEED, feature_extractor
from pipelines.data.augment import normalize

log = logging.getLogger(__name__)

#: On the CPU a feature batch holds at most this many pixels (32 tiles of 256 px): a resnet34 batch of 64 such
#: tiles peaks above 1.5 GB of RSS, 32 stay near 1.2 GB (bench_results/tiling/gigapixel_2cpu.md).
CPU_BATCH_PIXELS = 32 * 256 * 256


def features_key(slide_id: str, scale: str, extractor: str) -> str:
    return f"{slide_id}/features/{scale}/{extractor}"


def encoder_identity(weights: str | Path | None = None, pretrained: bool = False) -> str:
    """What made a feature array: ``random-init seed 0``, ``timm pretrained`` or ``<file name> sha256:<16 hex>``."""
    if weights is not None:
        path = Path(weights)
        stat = path.stat()
        return f"{path.name} sha256:{_file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}"
    if pretrained:
        return "timm pretrained"

    return f"random-init seed {EXTRACTOR_SEED}"


@lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cached_features(store_path: str | Path, slide_id: str, scale: str, extractor: str, *,
                    weights: str | None = None, pretrained: bool = False) -> np.ndarray | None:
    """The cached (N, D) features of a slide when they are complete and came from this encoder, else None."""

    group = zarr.open_group(str(store_path), mode="r")
    key = features_key(slide_id, scale, extractor)
    if key not in group or group[key].shape[0] != group[f"{slide_id}/tiles/{scale}"].shape[0]:
        return None
    if group[key].attrs.get("weights") != encoder_identity(weights, pretrained):
        return None
    return group[key][:].astype(np.float32)


def extract_slide_features(store_path: str | Path, slide_id: str, scale: str, extractor: str = "resnet50", *,
                           weights: str | None = None, pretrained: bool = False, batch_size: int = 64,
                           device: str = "cpu", model=None) -> np.ndarray:
    """(N, D) features of the tiles of ``slide_id`` at ``scale``; computed once, then read from the store.

    ``model``: an already built encoder, or a function that builds one when it is needed (saves rebuilding it per
    slide); it must be the encoder ``weights`` / ``pretrained`` describe, since they name the cache entry.

    One process computes a slide's features at a time (:func:`features_lock`; others wait, then read its result),
    and the array is written aside and renamed into place, so a reader never sees half of it."""
    cached = cached_features(store_path, slide_id, scale, extractor, weights=weights, pretrained=pretrained)
    if cached is not None:
        return cached
    lock = features_lock(store_path, slide_id)
    try:
        lock.acquire(on_wait=lambda holder: log.warning(
            "%s: features are being computed by %s; waiting for them", slide_id,
            holder.describe() if holder else "another process"))
    except OSError as exc:  # a full disk or read-only store: one error naming the lock file
        raise_if_environment(exc, lock.path)
        raise
    with lock:
        cached = cached_features(store_path, slide_id, scale, extractor, weights=weights, pretrained=pretrained)
        if cached is not None:  # the process we waited for cached them
            return cached
        return _compute_and_cache(store_path, slide_id, scale, extractor, weights=weights, pretrained=pretrained,
                                  batch_size=batch_size, device=device, model=model)


def features_lock(store_path: str | Path, slide_id: str) -> WorkLock:
    """The lock held while a slide's features are computed and cached (``<store>/<slide>.features.lock``)."""
    return WorkLock(Path(store_path) / f"{slide_id}.features.lock", f"caching features of {slide_id}")


def _compute_and_cache(store_path, slide_id, scale, extractor, *, weights, pretrained, batch_size, device,
                       model) -> np.ndarray:


    group = zarr.open_group(str(store_path), mode="r+")
    check_slide_shards(store_path, slide_id, read_index=True)  # zarr would encode a missing shard's zeros
    tiles = group[f"{slide_id}/tiles/{scale}"]
    key = features_key(slide_id, scale, extractor)
    identity = encoder_identity(weights, pretrained)
    if key in group:
        log.info("%s: cached %s features are stale or came from another encoder (%s); recomputing with %s", slide_id,
                 extractor, group[key].attrs.get("weights", "unknown"), identity)
    if callable(model) and not hasattr(model, "eval"):
        model = model()  # a factory: the encoder is built only when something must be computed
    if model is None:
        model, _ = feature_extractor(extractor, pretrained=pretrained, weights=weights)
    model = model.to(device).eval()
    if str(device).startswith("cpu"):  # host memory: a batch's activations are bounded, whatever the tile size
        batch_size = max(1, min(batch_size, CPU_BATCH_PIXELS // max(1, tiles.shape[1] * tiles.shape[2])))
    feats = np.zeros((0, 0), np.float16)
    with torch.inference_mode():  # filled in place: memory is the float16 result plus one batch, whatever N
        for start in range(0, tiles.shape[0], batch_size):
            batch = torch.from_numpy(tiles[start:start + batch_size]).to(device).permute(0, 3, 1, 2)
            out = model(normalize(batch.float() / 255.0)).float().cpu().numpy()
            if start == 0:
                feats = np.empty((tiles.shape[0], out.shape[1]), np.float16)
            feats[start:start + len(out)] = out
    _write_features(group, Path(store_path), slide_id, scale, extractor, feats, identity)
    log.debug("%s: %d tile features (%s, %d-d) cached", slide_id, len(feats), extractor, feats.shape[1])
    return feats.astype(np.float32)  # the same values a later read of the cache gives


def _write_features(group, store_path: Path, slide_id: str, scale: str, extractor: str, feats: np.ndarray,
                    identity: str) -> None:
    """Write the array aside and rename it into place: readers see the old array or the whole new one. A write
    that fails (a full disk) removes the aside copy, leaves the old array as it was, and raises."""
    folder = store_path / slide_id / "features" / scale
    aside = f".{extractor}.{os.getpid()}.tmp"
    try:
        with writing(folder / extractor):
            parent = group.require_group(f"{slide_id}/features/{scale}")
            parent.create_array(aside, data=feats, chunks=(max(1, len(feats)), feats.shape[1] or 1),
                                attributes={"weights": identity}, overwrite=True)
        replace_dir(folder / aside, folder / extractor)
    except BaseException as exc:
        shutil.rmtree(folder / aside, ignore_errors=True)
        if isinstance(exc, OSError):
            raise_if_environment(exc, folder / extractor)
        raise
