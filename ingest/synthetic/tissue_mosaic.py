"""A large pyramidal slide made of *real* tissue: a small real scan mirrored to fill any size.

Benchmarks on synthetic H&E flatter a codec (its texture compresses differently from a scan), and the only real
slide at hand (``../shared/data/wsi/cmu-1-small-region.svs``, 2220 x 2967 at 20x) is too small to time tiling
on. :func:`write_tissue_mosaic` takes the level-0 pixels of a real slide (its first page, or a region of it)
and repeats them by mirror reflection (``abc|cba|abc``...: no seams) to fill a ``width`` x ``height`` level 0,
then writes a tiled JPEG pyramid (levels 1 / 4 / 16 by default) with the conventions of
:mod:`ingest.synthetic.slide` (an Aperio-style description OpenSlide, cuCIM and tifffile all read, YCbCr JPEG
tiles). The real slide's glass stays glass, so the tissue fraction is the source's (~30 % for CMU-1's region).

Every level is rendered tile row by tile row from a box-reduced copy of the source (the source is cropped to a
multiple of the largest downsample, so each level is exactly the level-0 mosaic reduced), so memory stays at
the source plus a few strips whatever the output size. The result is a function of the source and arguments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ingest.synthetic.slide import aperio_description

log = logging.getLogger(__name__)

#: The scanner string of a mosaic slide's pages (OpenSlide needs the ``Aperio`` prefix to use its Aperio driver).
MOSAIC_SCANNER = "Aperio Image Library vRealTissueMosaic"


def source_pixels(source: str | Path) -> np.ndarray:
    """Level-0 RGB uint8 pixels of ``source`` (a TIFF/SVS: its first page; a PNG/JPEG: the image)."""
    source = Path(source)
    if source.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return np.asarray(Image.open(source).convert("RGB"))
    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        pixels = page.asarray()
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        raise ValueError(f"{source}: level 0 is not RGB (shape {pixels.shape})")
    return np.ascontiguousarray(pixels[..., :3].astype(np.uint8))


def _mirror_index(n: int, period: int) -> np.ndarray:
    """Indices ``0..n-1`` folded into ``0..period-1`` by mirror reflection."""
    i = np.arange(n) % (2 * period)
    return np.where(i < period, i, 2 * period - 1 - i)


def _reduce(pixels: np.ndarray, d: int) -> np.ndarray:
    return pixels if d == 1 else np.asarray(Image.fromarray(pixels).reduce(d))


def _level_tiles(src: np.ndarray, width: int, height: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles (row-major, ``tile`` x ``tile``, white-padded at the edges) of the mirrored mosaic of ``src``."""
    cols = _mirror_index(width, src.shape[1])
    for y0 in range(0, height, tile):
        rows = _mirror_index(height, src.shape[0])[y0:y0 + tile]
        strip = src[rows][:, cols]
        if strip.shape[0] < tile:
            strip = np.pad(strip, ((0, tile - strip.shape[0]), (0, 0), (0, 0)), constant_values=255)
        for x0 in range(0, width, tile):
            t = strip[:, x0:x0 + tile]
            if t.shape[1] < tile:
                t = np.pad(t, ((0, 0), (0, tile - t.shape[1]), (0, 0)), constant_values=255)
            yield np.ascontiguousarray(t)


def write_tissue_mosaic(source: str | Path, path: str | Path, *, width: int = 24000, height: int = 24000,
                        mpp: float = 0.499, objective_power: float = 20, levels: Sequence[int] = (1, 4, 16),
                        tile: int = 256, quality: int = 80, max_workers: int | None = None) -> Path:
    """Write the mirrored mosaic of real slide ``source`` to ``path`` (atomically) and return ``path``.

    Args:
        source: a real slide (SVS/TIFF, first page used) or image; mpp / objective_power: what its level 0 is
            (CMU-1's defaults: 0.499 µm/px, 20x).
        width, height: level-0 size of the mosaic; levels: integer downsamples, increasing, the first 1.
        tile: JPEG tile side (multiple of 16); quality: JPEG quality 1..100; max_workers: encoder threads.
    """
    levels = [int(d) for d in levels]
    if not levels or levels[0] != 1 or any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        raise ValueError(f"levels must be strictly increasing integer downsamples starting at 1, got {levels}")
    if tile < 16 or tile % 16 or not 1 <= quality <= 100 or width < 1 or height < 1:
        raise ValueError("tile must be a multiple of 16, quality in 1..100, width and height >= 1")
    pixels = source_pixels(source)
    m = math.lcm(*levels)
    h, w = (pixels.shape[0] // m) * m, (pixels.shape[1] // m) * m
    if h == 0 or w == 0:
        raise ValueError(f"{source}: smaller than the largest downsample ({m})")
    pixels = np.ascontiguousarray(pixels[:h, :w])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    bigtiff = width * height * 3 * 0.5 > 2**31 - 2**26
    log.info("writing a %dx%d mosaic of %s (%dx%d) to %s", width, height, source, w, h, path)
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for i, d in enumerate(levels):
            lw, lh = math.ceil(width / d), math.ceil(height / d)
            desc = aperio_description(width, height, tile, quality, mpp, objective_power,
                                      None if i == 0 else (lw, lh)).replace(
                "Aperio Image Library vSynthetic", MOSAIC_SCANNER)
            ppcm = 1e4 / (mpp * d)
            tw.write(_level_tiles(_reduce(pixels, d), lw, lh, tile), shape=(lh, lw, 3), dtype=np.uint8,
                     tile=(tile, tile), photometric="rgb", compression="jpeg",
                     compressionargs={"level": quality}, description=desc, metadata=None,
                     subfiletype=0 if i == 0 else 1, resolution=(ppcm, ppcm), resolutionunit="CENTIMETER",
                     maxworkers=max_workers)
    tmp.replace(path)
    return path
