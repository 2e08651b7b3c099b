"""tifffile backend (``pip install tifffile imagecodecs zarr``): any tiled or striped TIFF (pyramids stored as
SubIFDs / series levels, or as one top-level page per level like Aperio SVS), read tile by tile through zarr;
plus plain PNG / JPEG / BMP / ... images (and TIFFs tifffile cannot parse) opened with Pillow as one-level slides.

Pure Python + imagecodecs: the portable fallback that works wherever pip does.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
import zarr
from PIL import Image, UnidentifiedImageError

from histo_bench.optional import missing_modules
from ingest.readers.base import READERS, Level, ReaderError, SlideReader, one_line, positive_float, to_rgb

log = logging.getLogger(__name__)

#: Microns per TIFF ResolutionUnit (2 = inch, 3 = centimetre); unit 1 (none) carries no physical size.
_RES_UNIT_UM = {2: 25400.0, 3: 10000.0}
#: A pixel size above this (µm) is a screen DPI default (72 dpi = 353 µm), not a microscope's: ignored.
_MAX_MPP = 50.0
_APERIO_KEY = re.compile(r"\|\s*([^|=]+?)\s*=\s*([^|]*)")



def _plausible_mpp(mpp: float | None) -> float | None:
    return mpp if mpp is not None and 0 < mpp <= _MAX_MPP else None


def aperio_properties(description: str) -> dict[str, str]:
    """``key -> value`` of an Aperio ``ImageDescription`` (``...|AppMag = 20|MPP = 0.499``)."""
    return {k.strip(): v.strip() for k, v in _APERIO_KEY.findall(description or "")}



@READERS.register("tifffile")
class TifffileReader(SlideReader):
    """A TIFF read with ``tifffile`` + zarr (only the tiles a region touches are decoded), or an ordinary image
    read with Pillow (decoded once, kept in memory as one RGB level)."""

    name = "tifffile"
    priority = 30

    @classmethod
    def unavailable(cls) -> str | None:
        return missing_modules(["tifffile", "imagecodecs", "zarr"], "tifffile imagecodecs zarr")

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        why = self.unavailable()
        if why:
            raise ReaderError(f"{self.path}: {why}")
        self._tif = None
        self._arrays: list = []
        self._image: np.ndarray | None = None
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise ReaderError(f"{self.path}: {one_line(exc)}") from None
        if size == 0:
            raise ReaderError(f"{self.path}: empty file (0 bytes)")

        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as tiff_exc:  # TiffFileError ("not a TIFF file"), struct errors on garbage
            try:
                self._open_with_pillow()
            except ReaderError as pil_exc:
                raise ReaderError(f"{self.path}: neither a readable TIFF ({one_line(tiff_exc)}) nor an image "
                                  f"Pillow can decode ({str(pil_exc).removeprefix(f'{self.path}: ')})") from None
            return
        try:
            self._open_tiff(size)
        except ReaderError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ReaderError(f"{self.path}: unreadable TIFF: {one_line(exc)}") from None

    # -- TIFF ------------------------------------------------------------------------------------------------

    def _level_pages(self) -> list:
        """The pages of the pyramid, largest first: the first series' levels when it has several, else the
        top-level tiled pages with the base page's aspect ratio (skipping Aperio thumbnail, label, macro)."""
        tif = self._tif
        series = tif.series[0] if tif.series else None
        if series is not None and len(series.levels) > 1 and not tif.is_svs:
            return [lv.keyframe for lv in series.levels]
        base = series.keyframe if series is not None else tif.pages.first
        h0, w0 = base.imagelength, base.imagewidth
        pages = [base]
        for page in tif.pages:
            if page is base or not getattr(page, "is_tiled", False):
                continue
            h, w = page.imagelength, page.imagewidth
            if w >= pages[-1].imagewidth or page.samplesperpixel != base.samplesperpixel:
                continue
            if abs(h - h0 * w / w0) > max(1.5, 0.01 * h):  # other aspect ratio: label, macro...
                continue
            pages.append(page)
        return pages

    def _open_tiff(self, file_size: int) -> None:

        pages = self._level_pages()
        base = pages[0]
        if base.dtype != np.uint8:
            raise ReaderError(f"{self.path}: unsupported sample type {base.dtype} (only 8-bit slides)")
        if base.samplesperpixel not in (1, 3, 4) or (base.samplesperpixel > 1 and base.planarconfig != 1):
            raise ReaderError(f"{self.path}: unsupported layout ({base.samplesperpixel} samples, "
                              f"planar config {base.planarconfig})")
        for i, page in enumerate(pages):
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True) if c]
            if ends and max(ends) > file_size:
                raise ReaderError(f"{self.path}: truncated file: level {i} tile data ends at byte {max(ends)}, "
                                  f"file has {file_size} bytes")
        w0 = base.imagewidth
        self.levels = [Level(p.imagewidth, p.imagelength, w0 / p.imagewidth) for p in pages]
        for page in pages:
            z = zarr.open(page.aszarr(), mode="r")
            self._arrays.append(z if hasattr(z, "shape") else z["0"])
        self.mpp, self.objective_power = self._tiff_metadata(base)
        for i, lv in enumerate(self.levels):  # decode the last tile of every level: bad codecs fail here
            self._level_window(i, lv.width - 1, lv.height - 1, 1, 1)

    def _tiff_metadata(self, base) -> tuple[float | None, float | None]:
        desc = base.description or ""
        if desc.startswith("Aperio"):
            props = aperio_properties(desc)
            mpp, power = positive_float(props.get("MPP")), positive_float(props.get("AppMag"))
            if mpp is not None or power is not None:
                return mpp, power
        tags = base.tags
        unit_tag, res_tag = tags.get("ResolutionUnit"), tags.get("XResolution")
        unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
        if res_tag is not None and unit in _RES_UNIT_UM:
            value = res_tag.value
            ppu = value[0] / value[1] if isinstance(value, tuple) and value[1] else positive_float(value)
            if ppu:
                return _plausible_mpp(_RES_UNIT_UM[unit] / ppu), None
        return None, None

    def _level_window(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels ``[y, y+h) x [x, x+w)`` of a level, entirely inside it, as (h, w, C) uint8."""
        if self._image is not None:
            return self._image[y:y + h, x:x + w]
        arr = np.asarray(self._arrays[level][y:y + h, x:x + w])
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return arr

    # -- Pillow ----------------------------------------------------------------------------------------------

    def _open_with_pillow(self) -> None:

        try:
            with Image.open(self.path) as img:
                img.load()
                dpi = img.info.get("dpi")
                rgb = img.convert("RGBA" if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
                                  else "RGB")
                self._image = to_rgb(np.asarray(rgb))
        except UnidentifiedImageError:
            raise ReaderError(f"{self.path}: not a slide or an image file") from None
        except Exception as exc:  # truncated / corrupt data, decompression bomb...
            raise ReaderError(f"{self.path}: cannot decode image: {one_line(exc)}") from None
        h, w = self._image.shape[:2]
        self.levels = [Level(w, h, 1.0)]
        if dpi and positive_float(dpi[0]):
            self.mpp = _plausible_mpp(25400.0 / float(dpi[0]))

    # -- regions ---------------------------------------------------------------------------------------------

    def read_region(self, xy: tuple[int, int], size: tuple[int, int], level: int = 0) -> np.ndarray:
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level {level} out of range (slide has {len(self.levels)})")
        w, h = int(size[0]), int(size[1])
        if w < 1 or h < 1:
            raise ValueError(f"size must be positive, got {size}")
        lv = self.levels[level]
        lx = math.floor(xy[0] / lv.downsample + 1e-9)
        ly = math.floor(xy[1] / lv.downsample + 1e-9)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lv.width), min(ly + h, lv.height)
        try:
            if x0 == lx and y0 == ly and x1 - x0 == w and y1 - y0 == h:
                return to_rgb(self._level_window(level, x0, y0, w, h))
            out = np.full((h, w, 3), 255, dtype=np.uint8)
            if x1 > x0 and y1 > y0:
                out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = to_rgb(self._level_window(level, x0, y0, x1 - x0, y1 - y0))
            return out
        except Exception as exc:
            raise ReaderError(f"{self.path}: cannot read {size} at {tuple(xy)} level {level}: {one_line(exc)}") \
                from None

    def read_regions(self, xys: Sequence[tuple[int, int]], size: tuple[int, int], level: int = 0, *,
                     num_workers: int = 1) -> Iterator[np.ndarray]:
        """Regions in the order of ``xys``; with ``num_workers > 1`` decoded by a thread pool (imagecodecs
        releases the GIL), at most ``4 * num_workers`` regions ahead of the consumer."""
        if num_workers <= 1 or len(xys) < 2:
            yield from super().read_regions(xys, size, level)
            return
        window = 4 * num_workers
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            pending = []
            for xy in xys:
                pending.append(pool.submit(self.read_region, xy, size, level))
                if len(pending) >= window:
                    yield pending.pop(0).result()
            for fut in pending:
                yield fut.result()

    def close(self) -> None:
        self._arrays = []
        self._image = None
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
            self._tif = None
