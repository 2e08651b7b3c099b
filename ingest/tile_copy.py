"""Copy a slide's own JPEG tiles into the store, without decoding them.

When a scale is read from a pyramid level stored as JPEG tiles of exactly the store's tile size, with no resize
(the level's downsample is the scale's) and the grid on the level's tile grid (grids start at (0, 0) and step by
the tile, so they always are), every store tile *is* one tile of the slide file. Copying the bytes costs one
``pread`` per tile instead of a JPEG decode plus an encode: lossless with respect to the slide, and the
store is as small as the slide's tissue tiles.

Each copied tile is made a standalone JPEG any decoder reads (imagecodecs, Pillow, nvJPEG): the page's shared
``JPEGTables`` (Aperio's abbreviated streams) are put in front of the tile's scan, and tiles whose TIFF
photometric is RGB (JPEG without colour transform, Aperio's) get an Adobe APP14 marker saying so; YCbCr tiles are
left as they are. Tiles are checked to start with SOI and end with EOI; anything else is not copied.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
#: APP14 "Adobe", version 100, flags 0/0, transform 0 (the components are RGB, not YCbCr).
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_JPEG, _RGB, _YCBCR = 7, 2, 6


@dataclass(frozen=True)
class JpegTiles:
    """Where the JPEG tiles of one TIFF page are (offsets and sizes in the file) and how to make them whole."""

    path: str
    tile: int
    across: int  # tiles per row of the page
    offsets: np.ndarray
    counts: np.ndarray
    prefix: bytes  # written before each tile's bytes after its SOI (Adobe marker + tables), b"" when none

    def read(self, level_xys: np.ndarray) -> list[bytes]:
        """The standalone JPEGs of the tiles whose top-left corners are ``level_xys`` (level pixels, on the
        tile grid). Raises ValueError for a tile that is missing or not a whole JPEG stream."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            out = []
            for x, y in level_xys:
                k = (int(y) // self.tile) * self.across + int(x) // self.tile
                n = int(self.counts[k])
                raw = os.pread(fd, n, int(self.offsets[k])) if n else b""
                if len(raw) != n or n < 4 or raw[:2] != _SOI or raw[-2:] != _EOI:
                    raise ValueError(f"{self.path}: JPEG tile {k} is missing or cut short")
                out.append(_SOI + self.prefix + raw[2:] if self.prefix else raw)
            return out
        finally:
            os.close(fd)


def jpeg_tiles(path: str | Path, width: int, height: int, tile_size: int) -> JpegTiles | None:
    """The JPEG tiles of the page of ``path`` that is a ``width`` x ``height`` level, when they can be copied as
    store tiles of ``tile_size`` (a tiled, JPEG, 8-bit RGB page with square tiles of that size); else None."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ndpi:  # NDPI's "tiles" are strips cut at restart markers, not standalone JPEGs
                return None
            for page in tif.pages:
                if (page.imagewidth, page.imagelength) == (width, height):
                    return _page_tiles(str(path), page, tile_size)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        log.debug("%s: slide tiles cannot be copied (%s)", path, exc)
    return None


def _page_tiles(path: str, page, tile_size: int) -> JpegTiles | None:
    ok = (page.is_tiled and page.compression == _JPEG and page.tilewidth == page.tilelength == tile_size
          and page.samplesperpixel == 3 and page.bitspersample == 8 and page.planarconfig == 1
          and page.photometric in (_RGB, _YCBCR) and getattr(page, "tiledepth", 1) == 1)
    if not ok:
        return None
    tables = page.jpegtables or b""
    if tables and (tables[:2] != _SOI or tables[-2:] != _EOI):
        return None
    prefix = (_ADOBE_RGB if page.photometric == _RGB else b"") + (tables[2:-2] if tables else b"")
    across = -(-page.imagewidth // tile_size)
    tiles = JpegTiles(path, tile_size, across, np.asarray(page.dataoffsets, np.int64),
                      np.asarray(page.databytecounts, np.int64), prefix)
    if len(tiles.counts) != across * -(-page.imagelength // tile_size):
        return None
    try:
        tiles.read(np.zeros((1, 2), np.int64))  # the first tile must be a whole JPEG stream
    except ValueError:
        return None
    return tiles
