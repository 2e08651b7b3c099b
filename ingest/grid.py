"""Tile geometry: from a requested magnification or mpp to a downsample, a pyramid level to read, and the grid of
tile coordinates in level-0 pixels; plus concentric multi-scale fields of view for the fusion model.

Objective power and mpp are tied by the usual convention of scanners (and CLAM, TIAToolbox): 40x ~ 0.25 µm/px,
20x ~ 0.5 µm/px, i.e. ``mpp ~ 10 / magnification``. It is used only when a slide has one of the two and the
request is in terms of the other, and it is logged when it is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from histo_bench.errors import HistoBenchError

log = logging.getLogger(__name__)

MPP_TIMES_MAG = 10.0


class ScaleError(HistoBenchError, ValueError):
    """A magnification that cannot be resolved for a slide (missing metadata, upsampling); one line, says why."""


@dataclass(frozen=True)
class Scale:
    """One requested output scale.

    ``label`` names it in the store (``"20x"``, ``"0.5mpp"``), ``downsample`` is level-0 pixels per output pixel.
    """

    label: str
    downsample: float


@dataclass(frozen=True)
class BaseResolution:
    """What level 0 of a slide is: objective power and/or µm per pixel."""

    magnification: float | None
    mpp: float | None

    def resolve(self, *, magnification: float | None = None, mpp: float | None = None) -> Scale:
        """The downsample for a target magnification (e.g. 20) or mpp (e.g. 0.5)."""
        if (magnification is None) == (mpp is None):
            raise ScaleError("give exactly one of a magnification or an mpp")
        base_mag, base_mpp = self.magnification, self.mpp
        if magnification is not None:
            if magnification <= 0:
                raise ScaleError(f"magnification must be > 0, got {magnification}")
            if base_mag is None and base_mpp is not None:
                base_mag = MPP_TIMES_MAG / base_mpp
                log.info("no objective power; taking level 0 as %.3gx from its mpp %.3g (mpp x mag = %g)",
                         base_mag, base_mpp, MPP_TIMES_MAG)
            if base_mag is None:
                raise ScaleError("no objective power or mpp in the slide metadata; pass --base-mag or --base-mpp "
                                 "to say what level 0 is")
            downsample, label = base_mag / magnification, f"{magnification:g}x"
            if downsample < 1 - 1e-6:
                raise ScaleError(f"level 0 is {base_mag:g}x; cannot tile at {magnification:g}x (no upsampling)")
        else:
            assert mpp is not None
            if mpp <= 0:
                raise ScaleError(f"mpp must be > 0, got {mpp}")
            if base_mpp is None and base_mag is not None:
                base_mpp = MPP_TIMES_MAG / base_mag
                log.info("no mpp; taking level 0 as %.3g µm/px from its %gx objective (mpp x mag = %g)",
                         base_mpp, base_mag, MPP_TIMES_MAG)
            if base_mpp is None:
                raise ScaleError("no mpp or objective power in the slide metadata; pass --base-mpp or --base-mag "
                                 "to say what level 0 is")
            downsample, label = mpp / base_mpp, f"{mpp:g}mpp"
            if downsample < 1 - 1e-6:
                raise ScaleError(f"level 0 is {base_mpp:g} µm/px; cannot tile at {mpp:g} µm/px (no upsampling)")
        return Scale(label=label, downsample=max(downsample, 1.0))


def grid(width0: int, height0: int, size0: float, stride0: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-left level-0 (xs, ys) of every whole tile of level-0 side ``size0`` on a ``stride0`` grid (default:
    non-overlapping) that fits inside a ``width0 x height0`` slide; row-major order. Partial edge tiles are
    dropped, as in CLAM and TIAToolbox's default."""
    stride0 = stride0 or size0
    if size0 <= 0 or stride0 <= 0:
        raise ValueError("tile size and stride must be > 0")
    nx = int(math.floor((width0 - size0) / stride0 + 1e-9)) + 1 if width0 >= size0 else 0
    ny = int(math.floor((height0 - size0) / stride0 + 1e-9)) + 1 if height0 >= size0 else 0
    xs = np.rint(np.arange(nx) * stride0).astype(np.int64)
    ys = np.rint(np.arange(ny) * stride0).astype(np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return gx.ravel(), gy.ravel()


def concentric_boxes(xs: np.ndarray, ys: np.ndarray, size0: float, factors: tuple[int, ...] = (1, 2, 4, 8)
                     ) -> np.ndarray:
    """For tiles at (xs, ys) of side ``size0``: the level-0 top-left of fields of view ``factor`` times larger with
    the same centre, shape (N, len(factors), 2). Fields may extend beyond the slide (readers return white)."""
    cx = np.asarray(xs, dtype=np.float64) + size0 / 2
    cy = np.asarray(ys, dtype=np.float64) + size0 / 2
    out = np.empty((len(cx), len(factors), 2), dtype=np.int64)
    for k, f in enumerate(factors):
        out[:, k, 0] = np.rint(cx - f * size0 / 2)
        out[:, k, 1] = np.rint(cy - f * size0 / 2)
    return out
