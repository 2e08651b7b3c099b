"""OpenSlide backend (``pip install openslide-python openslide-bin``): Aperio, Hamamatsu, Leica, MIRAX, Philips,
Sakura, Trestle, Ventana, generic tiled TIFF and (OpenSlide >= 4) DICOM: a DICOM slide is opened by its folder of
instances (or any one of them)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from histo_bench.optional import missing_modules
from ingest.readers.base import (
    READERS,
    Level,
    ReaderError,
    SlideReader,
    dicom_instance,
    one_line,
    positive_float,
    to_rgb,
)

log = logging.getLogger(__name__)


def _library_major(openslide) -> int:
    """The major version of the OpenSlide C library that openslide-python loaded (0 when unknown)."""
    try:
        return int(str(openslide.__library_version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0

@READERS.register("openslide")
class OpenSlideReader(SlideReader):
    """A slide opened with ``openslide.OpenSlide``; regions come back RGBA and are composited over white."""

    name = "openslide"
    priority = 20

    @classmethod
    def unavailable(cls) -> str | None:
        return missing_modules(["openslide"], "openslide-python openslide-bin")

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        why = self.unavailable()
        if why:
            raise ReaderError(f"{self.path}: {why}")
        try:
            import openslide
        except Exception as exc:  # the shared library itself may be missing
            raise ReaderError(f"{self.path}: cannot load OpenSlide: {one_line(exc)}") from None
        dicom = dicom_instance(self.path)
        if dicom is not None and _library_major(openslide) < 4:
            raise ReaderError(f"{self.path}: DICOM needs OpenSlide >= 4 (this is {openslide.__library_version__}; "
                              "pip install -U openslide-bin)")
        try:
            self._slide = openslide.OpenSlide(str(dicom or self.path))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise ReaderError(f"{self.path}: {one_line(exc)}") from None
        try:
            s = self._slide
            w0, h0 = s.level_dimensions[0]
            self.levels = [Level(w, h, w0 / w) for w, h in s.level_dimensions]
            props = s.properties
            self.mpp = positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
            self.objective_power = positive_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
            # OpenSlide opens lazily: probe the last pixel of every level so truncated tile data fails here
            for i, lv in enumerate(self.levels):
                s.read_region((round((lv.width - 1) * lv.downsample), round((lv.height - 1) * lv.downsample)), i,
                              (1, 1))
        except Exception as exc:
            self._slide.close()
            raise ReaderError(f"{self.path}: unreadable slide data: {one_line(exc)}") from None

    def read_region(self, xy: tuple[int, int], size: tuple[int, int], level: int = 0) -> np.ndarray:
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level {level} out of range (slide has {len(self.levels)})")
        try:
            region = self._slide.read_region((int(xy[0]), int(xy[1])), level, (int(size[0]), int(size[1])))
        except Exception as exc:
            raise ReaderError(f"{self.path}: cannot read {size} at {xy} level {level}: {one_line(exc)}") from None
        return to_rgb(np.asarray(region))

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None

