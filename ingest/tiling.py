"""Whole-slide images -> tissue tiles at one or more magnifications, one slide at a time.

For each slide: open it with the first reader that can (cuCIM, OpenSlide, tifffile), build a thumbnail and a
tissue mask, lay a grid per requested scale, keep the tiles whose tissue fraction reaches the threshold, read only
those (batched, from the best pyramid level), resize the rest of the way, and write them to the slide store, or,
where the level's own JPEG tiles are the store's tiles, copy their bytes without decoding (:func:`tile_route`,
:mod:`ingest.tile_reads`, :mod:`ingest.tile_codecs`). Each
stage is timed. Any failure of a slide becomes a one-line :class:`SlideResult` error and never stops the other
slides, except a full disk or a read-only output (:mod:`ingest.disk`), which would fail every slide after it: that
aborts the run with one error naming the file, and a rerun resumes once there is space.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from histo_bench.errors import ConfigError
from ingest.disk import raise_if_environment
from ingest.grid import BaseResolution, Scale, ScaleError, concentric_boxes, grid
from ingest.readers.base import DICOM_SUFFIX, ReaderError, SlideReader, open_slide
from ingest.shards import ShardError
from ingest.slide_store import (
    PARTIAL,
    SlideStoreError,
    SlideWriter,
    check_slide_id,
    check_slide_shards,
    init_store,
    slide_lock,
    slide_status,
)
from ingest.tile_codecs import check_codec
from ingest.tile_copy import JpegTiles, jpeg_tiles
from ingest.tile_reads import copy_tiles, copyable_level, decode_and_write, read_tiles
from ingest.tile_reads import resize_batch as resize_batch  # re-exported: its historic home
from ingest.tissue import MaskError, TissueConfig, detect_tissue, load_mask, tile_fractions

log = logging.getLogger(__name__)

SLIDE_EXTENSIONS = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif",
                              ".svslide", ".png", ".jpg", ".jpeg", DICOM_SUFFIX})
#: (slide_id, done, total) for the tiles of one slide.
SlideProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TileConfig:
    """What ``histo-ingest tile`` does to each slide.

    Attributes:
        magnifications: target objective magnifications (e.g. 20, 5); each becomes a scale of the store.
        mpps: target µm per pixel (e.g. 0.5); each becomes a scale too.
        tile_size: output tile side in pixels.
        tissue_threshold: minimum tissue fraction for a tile to be kept (0 keeps every tile).
        base_magnification: objective power of level 0, overriding (or standing in for) the slide's metadata.
        base_mpp: µm per pixel of level 0, overriding (or standing in for) the slide's metadata.
        reader: ``auto`` or a reader name.
        multiscale: also write concentric fields of view (``fields`` x the tile) around each tile of the first
            scale, for the multi-input fusion model.
        fields: field-of-view factors for ``multiscale``.
        batch_size: regions per batched read (and per write).
        read_workers: threads the reader may use for a batch (cuCIM's ``num_workers``).
        shard_size: tiles per shard file.
        clevel: Blosc level of the tile store.
        codec: how tiles are stored (:mod:`ingest.tile_codecs`): ``auto`` (the slide's own JPEG tiles copied
            where they are the store's tiles, else ``blosc-zstd``), ``blosc-zstd``, ``blosc-lz4`` or ``jpeg``.
        quality: JPEG quality of tiles the ``jpeg`` codec encodes (copied tiles keep the slide's).
        write_workers: threads that encode and write tiles while the next batch is read.
        tissue: tissue-detection settings.
        masks: folder of user tissue masks, ``<slide id>.png`` (any size, nonzero = tissue), used instead of
            automatic detection; a slide without one falls back to detection; an unreadable one fails its slide.
    """

    magnifications: tuple[float, ...] = (20.0,)
    mpps: tuple[float, ...] = ()
    tile_size: int = 224
    tissue_threshold: float = 0.5
    base_magnification: float | None = None
    base_mpp: float | None = None
    reader: str = "auto"
    multiscale: bool = False
    fields: tuple[int, ...] = (1, 2, 4, 8)
    batch_size: int = 64
    read_workers: int = 2
    shard_size: int = 64
    clevel: int = 1
    codec: str = "auto"
    quality: int = 90
    write_workers: int = 2
    tissue: TissueConfig = field(default_factory=TissueConfig)
    masks: str | None = None

    def __post_init__(self) -> None:
        if not self.magnifications and not self.mpps:
            raise ConfigError("give at least one --mag or --mpp")
        bad = [f"--mag {m:g}" for m in self.magnifications if not m > 0] + [
            f"--mpp {m:g}" for m in self.mpps if not m > 0]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: magnifications and µm per pixel must be > 0")
        for name, value in (("--base-mag", self.base_magnification), ("--base-mpp", self.base_mpp)):
            if value is not None and not value > 0:
                raise ConfigError(f"{name} {value:g}: must be > 0")
        if self.tile_size < 16:
            raise ConfigError("tile_size must be >= 16")
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise ConfigError("tissue_threshold must be in [0, 1]")
        if min(self.batch_size, self.read_workers, self.shard_size, self.write_workers) < 1:
            raise ConfigError("batch_size, read_workers, write_workers and shard_size must be >= 1")
        check_codec(self.codec, self.quality)


@dataclass
class SlideResult:
    """What happened to one slide."""

    path: str
    slide_id: str
    status: str  # done | empty (no tissue) | skipped (already complete) | busy (another worker holds it) | failed
    error: str | None = None
    reader: str | None = None
    tiles: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    mpp: float | None = None
    objective_power: float | None = None

    def line(self) -> str:
        if self.status == "failed":
            return f"{self.path}: {self.error}"
        counts = ", ".join(f"{k}: {v}" for k, v in self.tiles.items())
        return f"{self.path}: {self.status} ({counts})" if counts else f"{self.path}: {self.status}"


class _Timer:
    """Seconds per stage, summed over threads (writer threads add theirs too)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"open": 0.0, "tissue": 0.0, "read": 0.0, "resize": 0.0, "write": 0.0}
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def slide_id_for(path: Path) -> str:
    """The store name of a slide: its file name without the extension (spaces and non-ASCII are kept); a DICOM
    slide (a folder of instances) is named after its folder."""
    if path.is_dir():
        return path.name
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def find_slides(root: str | Path) -> list[Path]:
    """Slide files under ``root`` (a file is taken as is), sorted; hidden files are ignored. The ``.dcm`` instances
    of a DICOM slide are one slide: the folder that holds them (:func:`ingest.readers.base.dicom_instance`)."""
    root = Path(root)
    if root.is_file():
        return [root.parent if root.suffix.lower() == DICOM_SUFFIX else root]
    if not root.is_dir():
        raise ConfigError(f"{root}: no such file or directory")
    found = {p.parent if p.suffix.lower() == DICOM_SUFFIX else p for p in root.rglob("*")
             if p.is_file() and p.suffix.lower() in SLIDE_EXTENSIONS and not p.name.startswith(".")}
    return sorted(found)


def _scales(reader: SlideReader, config: TileConfig) -> list[Scale]:
    base = BaseResolution(magnification=config.base_magnification or reader.objective_power,
                          mpp=config.base_mpp or reader.mpp)
    return ([base.resolve(magnification=m) for m in config.magnifications]
            + [base.resolve(mpp=m) for m in config.mpps])


def overlay_png(thumbnail: np.ndarray, mask: np.ndarray, boxes: np.ndarray, box_size: float, out: Path) -> Path:
    """The thumbnail with the tissue mask's outline in green (lightly tinted inside) and the kept tiles outlined
    in blue (boxes in thumbnail pixels)."""

    img = thumbnail.astype(np.float32)
    img[mask] = 0.85 * img[mask] + 0.15 * np.array([40, 200, 60], np.float32)
    edge = mask & ~binary_erosion(mask, iterations=2)
    img[edge] = (20, 170, 40)
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for x, y in boxes:
        draw.rectangle([float(x), float(y), float(x + box_size), float(y + box_size)], outline=(20, 40, 160))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pil.save(out)
    except OSError as exc:
        out.unlink(missing_ok=True)  # no half-written PNG under the slide's name
        raise_if_environment(exc, out)
        raise
    return out


def tile_route(reader: SlideReader, path: Path, downsample: float, config: TileConfig
               ) -> tuple[str, JpegTiles | None]:
    """(store codec, the slide's JPEG tiles to copy or None) for a scale of ``downsample``: the tiles are copied
    when the codec is ``auto`` or ``jpeg`` and the level read is JPEG-tiled at the tile size with no resize."""
    level = copyable_level(reader, downsample, config.tile_size)
    source = None
    if config.codec in ("auto", "jpeg") and level is not None:
        lv = reader.levels[level]
        source = jpeg_tiles(path, lv.width, lv.height, config.tile_size)
    if source is not None:
        return "jpeg", source
    return ("blosc-zstd" if config.codec == "auto" else config.codec), None


def tile_slide(path: str | Path, store: str | Path, config: TileConfig, *, overlay_dir: str | Path | None = None,
               progress: SlideProgress | None = None) -> SlideResult:
    """Tile one slide into ``store`` (see the module doc). Never raises for a bad slide: the result says why."""
    path = Path(path)
    sid = slide_id_for(path)
    result = SlideResult(path=str(path), slide_id=sid, status="failed")
    timer = _Timer()
    try:
        bad_name = check_slide_id(sid)
        if bad_name:
            raise SlideStoreError(bad_name)
        init_store(store)
        lock = slide_lock(store, sid)
        if _intact(store, sid):
            lock.clear_if_stale()  # a run killed between finishing the slide and releasing its lock
            result.status = "skipped"
            return result
        if not lock.try_acquire():  # another worker is on it: the caller comes back to it later
            holder = lock.holder()
            result.status = "busy"
            result.error = f"being tiled by {holder.describe() if holder else 'another process'}"
            return result
        with lock:
            if _intact(store, sid):  # finished by that worker between the two checks
                result.status = "skipped"
                return result
            with timer("open"):
                reader = open_slide(path, config.reader)
            with reader:
                result.reader, result.mpp, result.objective_power = reader.name, reader.mpp, reader.objective_power
                _tile_open_slide(reader, path, sid, Path(store), config, timer, result, overlay_dir, progress,
                                 lock.still_mine)
    except (ReaderError, ScaleError, SlideStoreError, MaskError) as exc:
        result.error = str(exc).removeprefix(f"{path}: ")
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # a slide that breaks mid-read
        raise_if_environment(exc, Path(store) / (sid + PARTIAL))  # a full disk ends the run, not just this slide
        result.error = f"{type(exc).__name__}: {exc}"
    result.timings = {k: round(v, 4) for k, v in timer.seconds.items()}
    if result.status == "failed":
        log.warning("failed %s: %s", path, result.error)
    return result


def _intact(store: str | Path, slide_id: str) -> bool:
    """True when slide ``slide_id`` is complete and every shard file of it is there with a readable index; a
    damaged one (a shard deleted or cut short) is tiled again, with a warning."""
    if slide_status(store, slide_id) != "complete":
        return False
    try:
        check_slide_shards(store, slide_id, read_index=True, hint="")
    except ShardError as exc:
        log.warning("%s; tiling the slide again", exc)
        return False
    return True


def tissue_mask(thumb: np.ndarray, slide_id: str, config: TileConfig) -> tuple[np.ndarray, str]:
    """(tissue mask on the thumbnail, where it came from: ``auto`` or the mask file): the user's
    ``<masks>/<slide id>.png`` when ``config.masks`` has one, else automatic detection."""
    if config.masks is not None:
        path = Path(config.masks) / f"{slide_id}.png"
        if path.is_file():
            return load_mask(path, thumb.shape[:2]), str(path)
        log.info("%s: no tissue mask %s; detecting tissue automatically", slide_id, path)
    return detect_tissue(thumb, config.tissue), "auto"


def _tile_open_slide(reader: SlideReader, path: Path, sid: str, store: Path, config: TileConfig, timer: _Timer,
                     result: SlideResult, overlay_dir, progress, still_mine) -> None:
    scales = _scales(reader, config)
    w0, h0 = reader.dimensions
    with timer("tissue"):
        thumb = reader.thumbnail(config.tissue.thumbnail_max_side)
        mask, tissue_source = tissue_mask(thumb, sid, config)
    thumb_ds = w0 / thumb.shape[1]
    plans = []
    for scale in scales:
        size0 = config.tile_size * scale.downsample
        xs, ys = grid(w0, h0, size0)
        frac = tile_fractions(mask, thumb_ds, xs, ys, size0)
        keep = frac >= config.tissue_threshold if config.tissue_threshold > 0 else np.ones(len(xs), bool)
        plans.append((scale, np.stack([xs[keep], ys[keep]], axis=1), frac[keep], size0))
    total = sum(len(p[1]) for p in plans) * (1 + (len(config.fields) if config.multiscale else 0))
    with timer("write"):
        writer = SlideWriter(store, sid, config.tile_size, shard_size=config.shard_size, clevel=config.clevel,
                             quality=config.quality)
        writer.write_thumbnail(thumb, mask)
    done = 0
    scale_attrs = {}
    for k, (scale, xys, frac, size0) in enumerate(plans):
        fields = len(config.fields) if (config.multiscale and k == 0) else 0
        codec, source = tile_route(reader, path, scale.downsample, config)
        with timer("write"):
            writer.create_scale(scale.label, len(xys), fields, codec)
            writer.write_meta(scale.label, xys.reshape(-1, 2), frac)

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(sid, done, total)

        if source is not None:
            copy_tiles(source, writer, scale.label, xys, scale.downsample, config, timer, step)
        else:
            decode_and_write(reader, writer, scale.label, xys, scale.downsample, config, timer, step)
        if fields:
            done = _write_multiscale(reader, writer, scale, xys, size0, config, timer, progress, sid, done, total)
        level = reader.best_level_for_downsample(scale.downsample)
        scale_attrs[scale.label] = {"downsample": scale.downsample, "level": level, "tiles": int(len(xys)),
                                    "tile_size0": size0, "codec": codec, "copied": source is not None}
        result.tiles[scale.label] = int(len(xys))
    if overlay_dir is not None and plans:
        scale, xys, _, size0 = plans[0]
        overlay_png(thumb, mask, xys / thumb_ds, size0 / thumb_ds, Path(overlay_dir) / f"{sid}.png")
    with timer("write"):
        writer.finalize({
            "source": str(path), "reader": reader.name, "mpp": reader.mpp, "objective_power": reader.objective_power,
            "base_magnification": config.base_magnification, "base_mpp": config.base_mpp,
            "width": w0, "height": h0, "levels": [asdict(lv) for lv in reader.levels],
            "tile_size": config.tile_size, "tissue_threshold": config.tissue_threshold,
            "thumbnail_downsample": thumb_ds, "tissue_fraction": float(mask.mean()), "tissue_source": tissue_source,
            "scales": scale_attrs,
            "multiscale_fields": list(config.fields) if config.multiscale else [],
            "timings": {k: round(v, 4) for k, v in timer.seconds.items()},
        }, still_mine)
    result.status = "done" if any(result.tiles.values()) else "empty"
    if result.status == "empty":
        log.warning("%s: no tissue tile reached the threshold %.2f (tissue covers %.1f%% of the thumbnail)",
                    path, config.tissue_threshold, 100 * float(mask.mean()))


def _write_multiscale(reader, writer, scale, xys, size0, config, timer, progress, sid, done, total) -> int:
    """Concentric fields of view around each tile, batch by batch (memory stays bounded by one batch)."""
    boxes = concentric_boxes(xys[:, 0], xys[:, 1], size0, config.fields)
    for start in range(0, len(xys), config.batch_size):
        views = []
        for k, f in enumerate(config.fields):
            chunk = boxes[start:start + config.batch_size, k]
            views.extend(batch for _, batch in read_tiles(reader, chunk, scale.downsample * f, config, timer))
        stacked = np.stack(views, axis=1)
        with timer("write"):
            writer.write_tiles(scale.label, start, stacked, kind="multiscale")
        done += stacked.shape[0] * stacked.shape[1]
        if progress:
            progress(sid, done, total)
    return done
