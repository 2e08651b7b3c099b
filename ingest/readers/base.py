"""The slide-reader protocol, the reader registry, and ``open_slide`` with automatic fallback.

Every backend takes level-0 ``(x, y)`` coordinates and a size in pixels *of the level read*, and returns RGB
uint8 ``(height, width, 3)`` whatever its native output (RGBA, BGR, premultiplied alpha...). Pixels outside the
slide are white. Backends register under a name with a priority (lower is tried first by ``--reader auto``), and
say why they are unusable through :meth:`SlideReader.unavailable` without importing their heavy library.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from histo_bench.errors import HistoBenchError
from histo_bench.registry import Registry

log = logging.getLogger(__name__)

READERS: Registry[type[SlideReader]] = Registry("slide reader")
#: DICOM whole-slide images are folders of instances with this suffix, one folder per slide; only OpenSlide (>= 4)
#: reads them.
DICOM_SUFFIX = ".dcm"
DICOM_READERS = ("openslide",)
#: Rows of the read level decoded at a time when a thumbnail must be built from a large level.
_THUMB_STRIP = 2048


class ReaderError(HistoBenchError, RuntimeError):
    """A slide that a reader cannot open or read; the message names the file and the reason."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and its downsample factor relative to level 0."""

    width: int
    height: int
    downsample: float


class SlideReader(ABC):
    """A whole-slide image opened by one backend. Use as a context manager, or call :meth:`close`."""

    name: ClassVar[str]
    #: Order for ``--reader auto``: lower first.
    priority: ClassVar[int] = 100

    levels: list[Level]
    mpp: float | None
    objective_power: float | None

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.mpp = None
        self.objective_power = None
        self.levels = []

    @classmethod
    def unavailable(cls) -> str | None:
        """None when this backend can be used here, else why not (must not import the heavy library)."""
        return None

    @abstractmethod
    def read_region(self, xy: tuple[int, int], size: tuple[int, int], level: int = 0) -> np.ndarray:
        """RGB uint8 (size[1], size[0], 3) at ``level``, top-left at level-0 ``xy``."""

    def read_regions(self, xys: Sequence[tuple[int, int]], size: tuple[int, int], level: int = 0, *,
                     num_workers: int = 1) -> Iterator[np.ndarray]:
        """Regions in the order of ``xys``; backends with native batching override this."""
        for xy in xys:
            yield self.read_region(xy, size, level)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's handle."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.levels[0].width, self.levels[0].height

    def best_level_for_downsample(self, downsample: float) -> int:
        """The most reduced level whose downsample does not exceed ``downsample`` (read there, resize the rest)."""
        best = 0
        for i, lv in enumerate(self.levels):
            if lv.downsample <= downsample * (1 + 1e-6):
                best = i if lv.downsample >= self.levels[best].downsample else best
        return best

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """RGB uint8 image of the whole slide whose longer side is at most ``max_side`` (streamed in strips)."""

        w0, h0 = self.dimensions
        target = max(w0, h0) / max_side
        level = self.best_level_for_downsample(max(target, 1.0))
        lv = self.levels[level]
        out_w = max(1, round(w0 / max(target, 1.0)))
        out_h = max(1, round(h0 / max(target, 1.0)))
        strips = []
        for y in range(0, lv.height, _THUMB_STRIP):
            rows = min(_THUMB_STRIP, lv.height - y)
            strip = self.read_region((0, round(y * lv.downsample)), (lv.width, rows), level)
            strip_h = max(1, round(rows * out_h / lv.height))
            strips.append(np.asarray(Image.fromarray(strip).resize((out_w, strip_h), Image.Resampling.BOX)))
        thumb = np.concatenate(strips, axis=0)
        if thumb.shape[0] != out_h:
            thumb = np.asarray(Image.fromarray(thumb).resize((out_w, out_h), Image.Resampling.BILINEAR))
        return thumb


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (libraries put newlines in theirs), or its type name."""
    return " ".join(str(exc).split()) or type(exc).__name__


def positive_float(value: object) -> float | None:
    """``float(value)`` when that is a positive number, else None (for metadata such as mpp)."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if out > 0 else None


def to_rgb(region: np.ndarray) -> np.ndarray:
    """RGB uint8 from an RGB or RGBA array; transparent pixels (outside the slide) become white."""
    if region.ndim != 3:
        raise ValueError(f"expected an (H, W, C) region, got shape {region.shape}")
    if region.shape[2] == 3:
        return np.ascontiguousarray(region, dtype=np.uint8)
    if region.shape[2] != 4:
        raise ValueError(f"expected 3 or 4 channels, got {region.shape[2]}")
    alpha = region[..., 3:4].astype(np.float32) / 255.0
    if alpha.min() == 1.0:
        return np.ascontiguousarray(region[..., :3])
    out = region[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)  # composite over white
    return np.rint(out).astype(np.uint8)


def available_readers() -> list[str]:
    """Registered reader names usable here, in ``auto`` priority order."""
    return [n for n in sorted(READERS.names(), key=lambda n: READERS.get(n).priority)
            if READERS.get(n).unavailable() is None]


def dicom_instance(path: str | Path) -> Path | None:
    """The instance to open a DICOM slide by: ``path`` itself when it is a ``.dcm`` file, the first ``.dcm`` file
    (sorted, not hidden) when it is a folder holding some (OpenSlide finds the series' other instances beside it);
    else None."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == DICOM_SUFFIX else None
    if not path.is_dir():
        return None
    return next((p for p in sorted(path.iterdir()) if p.suffix.lower() == DICOM_SUFFIX and p.is_file()
                 and not p.name.startswith(".")), None)


def open_slide(path: str | Path, reader: str = "auto", *, candidates: Iterable[str] | None = None) -> SlideReader:
    """Open ``path`` with the named reader, or with ``auto``: each available reader in priority order, falling
    back to the next with the reason logged. A DICOM slide (a folder of ``.dcm`` instances, or one of them) goes
    to the readers that read DICOM (:data:`DICOM_READERS`) only. Raises :class:`ReaderError` naming the file and
    every reason."""
    import ingest.readers  # noqa: F401 - registers the backends

    path = Path(path)
    if not path.exists():
        raise ReaderError(f"{path}: no such file")
    if dicom_instance(path) is not None:
        if reader not in ("auto", *DICOM_READERS):
            raise ReaderError(f"{path}: a DICOM slide; reader {reader!r} cannot read DICOM (use "
                              f"{' or '.join(DICOM_READERS)}, or auto)")
        usable = [n for n in DICOM_READERS if READERS.get(n).unavailable() is None]
        if not usable:
            why = "; ".join(f"{n}: {READERS.get(n).unavailable()}" for n in DICOM_READERS)
            raise ReaderError(f"{path}: a DICOM slide needs OpenSlide >= 4 ({why})")
        candidates = [n for n in (candidates or usable) if n in usable]
    elif path.is_dir():
        raise ReaderError(f"{path}: a folder, and not a DICOM slide (no {DICOM_SUFFIX} files in it)")
    if reader != "auto":
        cls = READERS.get(reader)
        why = cls.unavailable()
        if why:
            raise ReaderError(f"{path}: reader {reader!r} is unavailable: {why}")
        return cls(path)
    reasons = []
    for name in candidates or available_readers():
        try:
            return READERS.get(name)(path)
        except ReaderError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            log.info("%s: %s cannot open it (%s); trying the next reader", path, name, reason)
            reasons.append(f"{name}: {reason}")
    if not reasons:
        raise ReaderError(f"{path}: no slide reader is installed (pip install tifffile imagecodecs)")
    raise ReaderError(f"{path}: no reader could open it ({'; '.join(reasons)})")
