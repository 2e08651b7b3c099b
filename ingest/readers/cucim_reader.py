"""cuCIM backend (``pip install cucim-cu12`` / ``cucim-cu13``): tiled generic TIFF, Aperio SVS and Philips TIFF,
decoded with many CPU threads (or nvJPEG on the GPU), with a native batched ``read_region``."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from histo_bench.optional import missing_modules
from ingest.readers.base import READERS, Level, ReaderError, SlideReader, one_line, positive_float, to_rgb

log = logging.getLogger(__name__)

#: Microns per spacing unit reported by ``CuImage.spacing_units()``.
_UNIT_UM = {"micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3, "nm": 1e-3,
            "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4, "inch": 25400.0, "in": 25400.0}

#: What cuFile (GPUDirect Storage) prints (on stdout) when it cannot start: no CUDA driver on this machine.
_CUFILE_NOISE = ("libcuda.so", "missing cuda symbols", "cuFile initialization failed")
_import_lock = threading.Lock()


def keep_cufile_log_out_of_cwd() -> None:
    """Send cuFile's log to /dev/null unless the user chose where it goes (``CUFILE_LOGFILE_PATH``, or a
    ``cufile.json`` through ``CUFILE_ENV_PATH_JSON``). Call before cucim is imported.

    cuCIM starts cuFile when it is imported in a process where libcufile is already loaded (torch loads it); on a
    machine without a CUDA driver that start fails, and cuFile writes why into ``cufile.log`` in the current
    folder, which is where the user happens to be."""
    if "CUFILE_LOGFILE_PATH" not in os.environ and "CUFILE_ENV_PATH_JSON" not in os.environ:
        os.environ["CUFILE_LOGFILE_PATH"] = os.devnull


def _import_cuimage():
    """``cucim.CuImage``, imported without leaving ``cufile.log`` behind and without the lines a failed cuFile start
    prints on stdout (which may be piped into something); anything else written meanwhile is passed on."""
    with _import_lock:
        keep_cufile_log_out_of_cwd()
        if "cucim" in sys.modules:  # imported already: nothing more to quieten
            from cucim import CuImage

            return CuImage
        with _without_cufile_noise():
            from cucim import CuImage
    return CuImage


_opened_one = False


def _open_cuimage(cuimage, path: str):
    """``cuimage(path)``; the process's first successful open is quietened like the import (cuCIM tries to start
    cuFile again there)."""
    global _opened_one
    if _opened_one:
        return cuimage(path)
    with _import_lock:
        with _without_cufile_noise():
            img = cuimage(path)
        _opened_one = True
    return img


@contextmanager
def _without_cufile_noise() -> Iterator[None]:
    """Capture file descriptors 1 and 2 (what C libraries write to) for the block, then pass on every captured line
    except cuFile's failed-start lines."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except OSError:  # no stdout / stderr to quieten (a closed descriptor)
        yield
        return
    captured = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    try:
        for fd, file in captured.items():
            os.dup2(file.fileno(), fd)
        yield
    finally:
        libc.fflush(None)  # C stdio's buffers, while they still go to the captures
        for fd, file in captured.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            file.seek(0)
            lines = file.read().decode(errors="replace").splitlines(keepends=True)
            file.close()
            kept = "".join(line for line in lines if not any(n in line for n in _CUFILE_NOISE))
            if kept:
                os.write(fd, kept.encode())


@READERS.register("cucim")
class CuCIMReader(SlideReader):
    """A slide opened with ``cucim.CuImage``.

    cuCIM only reads tiled TIFF-like files (no strip-based TIFF, no PNG/JPEG, no MIRAX...); anything it cannot
    open or read raises :class:`ReaderError`, so ``open_slide(..., "auto")`` falls back to the next reader.

    Args:
        device: ``"cpu"`` (default) or ``"cuda"`` to decode JPEG tiles with nvJPEG on the GPU and get device
            arrays back (converted to host numpy here). The CUDA path could not be tested on the CPU-only
            machine this was written on.
    """

    name = "cucim"
    priority = 10

    @classmethod
    def unavailable(cls) -> str | None:
        return missing_modules(["cucim"], "cucim-cu12  # or cucim-cu13, matching your CUDA")

    def __init__(self, path: str | Path, *, device: str = "cpu") -> None:
        super().__init__(path)
        why = self.unavailable()
        if why:
            raise ReaderError(f"{self.path}: {why}")
        self.device = device
        try:
            CuImage = _import_cuimage()
        except Exception as exc:  # e.g. a CUDA runtime mismatch
            raise ReaderError(f"{self.path}: cannot import cucim: {one_line(exc)}") from None
        try:
            self._img = _open_cuimage(CuImage, str(self.path))
        except Exception as exc:  # ValueError "Cannot load ..." for non-TIFF / unsupported files
            raise ReaderError(f"{self.path}: cuCIM cannot open it: {one_line(exc)}") from None
        try:
            res = self._img.resolutions
            dims = res["level_dimensions"]
            w0 = dims[0][0]
            self.levels = [Level(int(w), int(h), w0 / w) for w, h in dims]
            tiles = res.get("level_tile_sizes") or ()
            if any(min(t) <= 0 for t in tiles):
                # striped TIFF: cuCIM's slow path returns RGBA and fails on regions crossing the border
                raise ReaderError(f"{self.path}: not a tiled TIFF (cuCIM reads tiled slides only)")
            if self._img.dims[-1:] != "C" or self._img.shape[-1] not in (3, 4):
                raise ReaderError(f"{self.path}: not an RGB slide (dims {self._img.dims}, shape {self._img.shape})")
            self.mpp, self.objective_power = self._metadata()
            # cuCIM opens lazily: probe the last pixel of every level so truncated tile data fails here
            for i, lv in enumerate(self.levels):
                self._read((round((lv.width - 1) * lv.downsample), round((lv.height - 1) * lv.downsample)), (1, 1), i)
        except ReaderError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ReaderError(f"{self.path}: unreadable slide data: {one_line(exc)}") from None

    def _metadata(self) -> tuple[float | None, float | None]:
        """(mpp, objective power) from Aperio metadata, else from the TIFF resolution (``spacing``)."""
        meta = self._img.metadata or {}
        aperio = meta.get("aperio", {}) or {}
        mpp = positive_float(aperio.get("MPP"))
        power = positive_float(aperio.get("AppMag"))
        if mpp is None:
            dims = self._img.dims
            try:
                spacing = dict(zip(dims, self._img.spacing(), strict=True))
                units = dict(zip(dims, self._img.spacing_units(), strict=True))
            except Exception:  # pragma: no cover - depends on the cuCIM build
                spacing, units = {}, {}
            scale = _UNIT_UM.get(str(units.get("X", "")).lower())
            if scale is not None and positive_float(spacing.get("X")):
                mpp = float(spacing["X"]) * scale
        return mpp, power

    def _read(self, xy: tuple[int, int], size: tuple[int, int], level: int) -> np.ndarray:
        region = self._img.read_region(location=(int(xy[0]), int(xy[1])), size=(int(size[0]), int(size[1])),
                                       level=int(level), device=self.device)
        return _to_host(region)

    def _check(self, size: tuple[int, int], level: int) -> None:
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level {level} out of range (slide has {len(self.levels)})")
        if size[0] < 1 or size[1] < 1:
            raise ValueError(f"size must be positive, got {size}")

    def read_region(self, xy: tuple[int, int], size: tuple[int, int], level: int = 0) -> np.ndarray:
        self._check(size, level)
        try:
            region = self._read(xy, size, level)
        except Exception as exc:
            raise ReaderError(f"{self.path}: cannot read {size} at {xy} level {level}: {one_line(exc)}") from None
        return to_rgb(region)  # cuCIM fills out-of-slide pixels with 255 already

    def read_regions(self, xys: Sequence[tuple[int, int]], size: tuple[int, int], level: int = 0, *,
                     num_workers: int = 1, batch_size: int = 32) -> Iterator[np.ndarray]:
        """cuCIM's batched reader: ``CuImage.read_region(location=[...], num_workers=, batch_size=)`` decodes
        tiles on ``num_workers`` threads and yields (batch, H, W, C) arrays in the order of ``xys``."""
        self._check(size, level)
        locations = [(int(x), int(y)) for x, y in xys]
        if not locations:
            return
        try:
            batches = self._img.read_region(location=locations, size=(int(size[0]), int(size[1])), level=int(level),
                                            num_workers=max(1, int(num_workers)), batch_size=max(1, int(batch_size)),
                                            shuffle=False, drop_last=False, device=self.device)
            for batch in batches:
                # the iterator reuses its buffers: copy each batch before advancing
                arr = np.array(_to_host(batch), copy=True)
                if arr.ndim == 3:
                    arr = arr[None]
                for region in arr:
                    yield to_rgb(region)
        except ReaderError:
            raise
        except Exception as exc:
            raise ReaderError(f"{self.path}: batched read of {len(locations)} regions failed: {one_line(exc)}") \
                from None

    def close(self) -> None:
        img = getattr(self, "_img", None)
        if img is not None:
            try:
                img.close()
            except Exception:  # pragma: no cover - older cuCIM without close()
                pass
            self._img = None


def _to_host(region: object) -> np.ndarray:
    """A numpy array from a CuImage region (host memory, or device memory via ``__cuda_array_interface__``)."""
    if hasattr(region, "__cuda_array_interface__") and not hasattr(region, "__array_interface__"):
        import cupy  # only reached with device="cuda"

        return cupy.asnumpy(cupy.asarray(region))
    return np.asarray(region)
