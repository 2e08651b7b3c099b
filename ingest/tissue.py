"""Tissue detection on a slide thumbnail: Otsu on saturation, morphology, minimum area, hole filling; or a mask the
user drew (:func:`load_mask`: a PNG per slide, resized to the thumbnail).

The same code runs on the CPU (numpy + scipy.ndimage) and on a GPU (cupy + cupyx.scipy.ndimage, whose API
mirrors scipy's), so both give the same mask. Background glass is bright and unsaturated; H&E-stained tissue is
saturated. A floor under the Otsu threshold keeps an empty slide from being split into "tissue" and noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import scipy.ndimage as ndi
from PIL import Image, UnidentifiedImageError

from histo_bench.errors import ConfigError, HistoBenchError
from histo_bench.optional import require

log = logging.getLogger(__name__)


class MaskError(HistoBenchError, ValueError):
    """A user tissue mask that cannot be read or used; the message names the file and says why (one line)."""


@dataclass(frozen=True)
class TissueConfig:
    """How tissue is found on the thumbnail.

    Attributes:
        thumbnail_max_side: longer side (px) of the thumbnail the mask is computed on.
        min_saturation: lowest saturation threshold (0..1) Otsu may choose; below it a slide counts as empty.
        max_brightness: pixels brighter than this (0..1, HSV value) are background whatever their saturation.
        closing_px: radius (thumbnail px) of the closing that bridges small gaps inside tissue.
        opening_px: radius (thumbnail px) of the opening that removes specks.
        min_area_fraction: connected tissue regions smaller than this fraction of the thumbnail are dropped.
        max_hole_fraction: holes inside tissue up to this fraction of the thumbnail are filled (bigger ones, such
            as real gaps between tissue pieces, stay background).
    """

    thumbnail_max_side: int = 1024
    min_saturation: float = 0.07
    max_brightness: float = 0.98
    closing_px: int = 2
    opening_px: int = 1
    min_area_fraction: float = 2e-4
    max_hole_fraction: float = 2e-3

    def __post_init__(self) -> None:
        if self.thumbnail_max_side < 16:
            raise ValueError("thumbnail_max_side must be >= 16")
        if not 0 <= self.min_saturation < 1 or not 0 < self.max_brightness <= 1:
            raise ValueError("min_saturation must be in [0, 1) and max_brightness in (0, 1]")
        if self.closing_px < 0 or self.opening_px < 0:
            raise ValueError("closing_px and opening_px must be >= 0")


def gpu_available() -> bool:
    """True when cupy is installed and sees a CUDA device (checked lazily; no import side effects here)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _backend(device: str) -> tuple[ModuleType, ModuleType, str]:
    if device == "auto":
        device = "cuda" if gpu_available() else "cpu"
    if device == "cuda":
        cupy = require("cupy", "'histo-bench[gpu]'  # GPU tissue detection")
        return cupy, require("cupyx.scipy.ndimage", "'histo-bench[gpu]'"), "cuda"
    if device != "cpu":
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")

    return np, ndi, "cpu"


def _disk(xp: ModuleType, radius: int):
    r = np.arange(-radius, radius + 1)
    return xp.asarray((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius)


def otsu_threshold(values, xp: ModuleType = np) -> float:
    """Otsu's threshold of uint8 values (between-class variance maximised over the 256-bin histogram)."""
    hist = xp.bincount(values.ravel(), minlength=256)[:256].astype(xp.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = xp.arange(256, dtype=xp.float64)
    w0 = xp.cumsum(hist)
    w1 = total - w0
    m0 = xp.cumsum(hist * levels)
    mean0 = m0 / xp.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / xp.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(xp.argmax(between))


def detect_tissue(thumbnail: np.ndarray, config: TissueConfig = TissueConfig(), device: str = "auto") -> np.ndarray:
    """Boolean tissue mask, same height and width as the RGB uint8 ``thumbnail``; always returned on the CPU."""
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3:
        raise ValueError(f"thumbnail must be (H, W, 3) RGB, got {thumbnail.shape}")
    xp, ndi, where = _backend(device)
    rgb = xp.asarray(thumbnail)
    mx = rgb.max(axis=2).astype(xp.int32)
    mn = rgb.min(axis=2).astype(xp.int32)
    sat = xp.where(mx > 0, (mx - mn) * 255 // xp.maximum(mx, 1), 0).astype(xp.uint8)
    threshold = max(otsu_threshold(sat, xp), config.min_saturation * 255)
    mask = (sat > threshold) & (mx <= config.max_brightness * 255)
    if config.closing_px:
        mask = ndi.binary_closing(mask, structure=_disk(xp, config.closing_px), border_value=0)
    if config.opening_px:
        mask = ndi.binary_opening(mask, structure=_disk(xp, config.opening_px))
    area = mask.shape[0] * mask.shape[1]
    mask = _drop_small(mask, xp, ndi, config.min_area_fraction * area)
    if config.max_hole_fraction > 0:
        holes = ndi.binary_fill_holes(mask) & ~mask
        small_holes = _drop_small(holes, xp, ndi, 0, keep_below=config.max_hole_fraction * area)
        mask = mask | small_holes
    log.debug("tissue on %s: saturation threshold %.0f, %.1f%% tissue", where, threshold, 100 * float(mask.mean()))
    return mask.get() if where == "cuda" else np.asarray(mask)


def _drop_small(mask, xp: ModuleType, ndi: ModuleType, min_area: float, keep_below: float | None = None):
    """Keep connected regions with area >= min_area (and, with ``keep_below``, area <= keep_below)."""
    labels, n = ndi.label(mask)
    if int(n) == 0:
        return mask
    sizes = xp.bincount(labels.ravel())
    keep = sizes >= min_area
    if keep_below is not None:
        keep &= sizes <= keep_below
    keep[0] = False
    return keep[labels]


def tile_fractions(mask: np.ndarray, mask_downsample: float, xs: np.ndarray, ys: np.ndarray,
                   size0: float) -> np.ndarray:
    """Tissue fraction of each square tile (level-0 top-left ``xs, ys``, level-0 side ``size0``), from a mask whose
    pixels each cover ``mask_downsample`` level-0 pixels. Uses a summed-area table: O(1) per tile."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    h, w = mask.shape

    def to_mask(v: np.ndarray, limit: int) -> np.ndarray:
        return np.clip(np.rint(v / mask_downsample).astype(np.int64), 0, limit)

    x0, y0 = to_mask(np.asarray(xs, dtype=np.float64), w), to_mask(np.asarray(ys, dtype=np.float64), h)
    x1 = np.maximum(to_mask(np.asarray(xs, dtype=np.float64) + size0, w), np.minimum(x0 + 1, w))
    y1 = np.maximum(to_mask(np.asarray(ys, dtype=np.float64) + size0, h), np.minimum(y0 + 1, h))
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (inside / area).astype(np.float32)


def load_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A user tissue mask (any image Pillow reads, typically a PNG; nonzero = tissue) as a boolean mask of
    ``shape`` (the thumbnail's height, width). A mask of another size is resized: a thumbnail pixel is tissue when
    at least half of the mask area it covers is. Raises :class:`MaskError` for an unreadable or empty file."""

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise MaskError(f"tissue mask {path}: cannot read it ({reason})") from exc
    if arr.ndim == 3:
        arr = arr[..., :3].any(axis=-1)  # colour masks: any nonzero channel (alpha ignored)
    if arr.ndim != 2 or arr.size == 0:
        raise MaskError(f"tissue mask {path}: expected a 2-D image, got shape {arr.shape}")
    mask = arr != 0
    h, w = shape
    if mask.shape != (h, w):
        ratio_mask, ratio_thumb = mask.shape[1] / mask.shape[0], w / h
        if abs(ratio_mask / ratio_thumb - 1) > 0.05:
            log.warning("tissue mask %s is %dx%d, the slide thumbnail %dx%d: the aspect ratios differ; stretching",
                        path, mask.shape[1], mask.shape[0], w, h)
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BOX)
        mask = np.asarray(resized) >= 128
    return mask
