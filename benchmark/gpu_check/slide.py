"""The tiling step's slide: the synthetic 40x pyramid of :mod:`ingest.synthetic.slide`, written with deflate tiles.

The GPU machine has tifffile but no imagecodecs, so the JPEG tiles of ``write_synthetic_slide`` cannot be written
there; tifffile encodes deflate (zlib) with the standard library. The pixels are the generator's own, rendered strip
by strip (:func:`ingest.synthetic.slide.render_level_region`), with the same Aperio-style description and level
layout, so every reader opens it as it opens the JPEG slides.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from ingest.synthetic.slide import aperio_description, render_level_region

COMPRESSION = "zlib"  # TIFF compression 8 (Adobe deflate)


def _tiles(width: int, height: int, d: int, levels: Sequence[int], tile: int, seed: int) -> Iterator[np.ndarray]:
    lw, lh = math.ceil(width / d), math.ceil(height / d)
    for y0 in range(0, lh, tile):
        rows = min(tile, lh - y0)
        strip = render_level_region(0, y0, lw, rows, width=width, height=height, downsample=d, levels=levels,
                                    seed=seed)
        strip = np.pad(strip, ((0, tile - rows), (0, -lw % tile), (0, 0)), constant_values=255)
        for x0 in range(0, lw, tile):
            yield np.ascontiguousarray(strip[:, x0:x0 + tile])


def write_deflate_slide(path: str | Path, size: int, *, levels: Sequence[int] = (1, 4, 16), tile: int = 256,
                        mpp: float = 0.25, objective_power: float = 40, seed: int = 0) -> Path:
    """Write a ``size`` x ``size`` synthetic pyramidal TIFF with deflate tiles to ``path`` (temp name, then
    rename) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(tmp, bigtiff=size * size * 3 > 2**31) as tw:
        for i, d in enumerate(levels):
            lw, lh = math.ceil(size / d), math.ceil(size / d)
            desc = aperio_description(size, size, tile, 90, mpp, objective_power, None if i == 0 else (lw, lh))
            ppcm = 1e4 / (mpp * d)
            tw.write(_tiles(size, size, d, levels, tile, seed), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression=COMPRESSION, description=desc.replace("JPEG/RGB", "Deflate/RGB"),
                     metadata=None, subfiletype=0 if i == 0 else 1, resolution=(ppcm, ppcm),
                     resolutionunit="CENTIMETER")
    tmp.replace(path)
    return path
