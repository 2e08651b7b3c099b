"""The hot loop of tiling one scale of one slide: read (or copy) the kept tiles and write them, overlapped.

Two routes, chosen per scale by :func:`ingest.tiling._tile_open_slide`:

* **decode**: tiles adjacent on a row are read as one region and cut up (each JPEG tile of the slide is decoded
  once), resized the rest of the way, and encoded + written by ``write_workers`` background threads while the
  next batch is read (the codecs release the GIL, so a slide's work spreads over the cores);
* **copy**: the slide's own JPEG tiles are copied into a JPEG store without decoding (:mod:`ingest.tile_copy`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from ingest.readers.base import SlideReader
from ingest.tile_copy import JpegTiles

#: At most this many horizontally adjacent tiles are read as one region.
MAX_RUN = 16


def resize_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """(N, s, s, 3) -> (N, size, size, 3): exact block averaging for integer factors (Pillow's ``reduce``, ~10x
    faster than a numpy reshape-mean), Pillow's box filter otherwise."""
    s = batch.shape[1]
    if s == size:
        return batch
    if s % size == 0:
        return np.stack([np.asarray(Image.fromarray(t).reduce(s // size)) for t in batch])
    resample = Image.Resampling.BOX if s > size else Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(t).resize((size, size), resample)) for t in batch])


def runs(chunk: list[tuple[int, int]], step0: float | None) -> list[tuple[int, int]]:
    """(start, length) runs of consecutive tiles in ``chunk`` that touch left-to-right on one row (``step0`` apart
    in level-0 pixels); every tile is its own run when ``step0`` is None."""
    out: list[tuple[int, int]] = []
    for k, (x, y) in enumerate(chunk):
        if (step0 is not None and out and out[-1][1] < MAX_RUN
                and chunk[k - 1][1] == y and x - chunk[k - 1][0] == step0):
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out


def read_tiles(reader: SlideReader, xys: np.ndarray, downsample: float, config, timer) -> Iterator:
    """Yield (start, (N, T, T, 3)) batches of the tiles at level-0 ``xys`` for a scale of ``downsample``
    (``config``: a :class:`~ingest.tiling.TileConfig`; ``timer(stage)``: a context manager per stage).

    Tiles that touch on a row are read as one wider region and cut up: fewer calls, and each JPEG tile of the
    slide is decoded once instead of once per overlapping tile (the pixels are the same when the level's
    downsample is a whole number, which is when runs are formed).
    """
    level = reader.best_level_for_downsample(downsample)
    level_ds = reader.levels[level].downsample
    region = max(1, round(config.tile_size * downsample / level_ds))
    step0 = region * level_ds if float(level_ds).is_integer() else None
    for start in range(0, len(xys), config.batch_size):
        chunk = [(int(x), int(y)) for x, y in xys[start:start + config.batch_size]]
        with timer("read"):
            batch = np.empty((len(chunk), region, region, 3), np.uint8)
            by_width: dict[int, list[tuple[int, int]]] = {}
            for k, n in runs(chunk, step0):
                by_width.setdefault(n, []).append((k, n))
            for n, group in by_width.items():
                strips = reader.read_regions([chunk[k] for k, _ in group], (region * n, region), level,
                                             num_workers=config.read_workers)
                for (k, _), strip in zip(group, strips, strict=True):
                    batch[k:k + n] = strip.reshape(region, n, region, 3).transpose(1, 0, 2, 3)
        with timer("resize"):
            batch = resize_batch(batch, config.tile_size)
        yield start, batch


def copyable_level(reader: SlideReader, downsample: float, tile_size: int) -> int | None:
    """The level whose tiles are a scale's tiles (read without a resize: its downsample is the scale's, to
    1e-6), or None."""
    level = reader.best_level_for_downsample(downsample)
    level_ds = float(reader.levels[level].downsample)
    return level if abs(level_ds - downsample) <= 1e-6 * downsample else None


def copy_tiles(source: JpegTiles, writer, label: str, xys: np.ndarray, downsample: float, config, timer,
               progress: Callable[[int], None]) -> None:
    """Copy the slide's JPEG tiles at level-0 ``xys`` into ``writer``'s scale ``label``, a shard at a time."""
    level_xys = np.rint(np.asarray(xys, np.float64).reshape(-1, 2) / downsample).astype(np.int64)
    if len(level_xys) and ((level_xys % source.tile).any()):
        raise ValueError("tile grid is not on the slide's JPEG tile grid")
    step = config.shard_size
    for start in range(0, len(level_xys), step):
        with timer("read"):
            blobs = source.read(level_xys[start:start + step])
        with timer("write"):
            writer.write_encoded_tiles(label, start, blobs)
        progress(len(blobs))


def decode_and_write(reader: SlideReader, writer, label: str, xys: np.ndarray, downsample: float, config, timer,
                     progress: Callable[[int], None]) -> None:
    """Read, resize and write the tiles at ``xys``: ``config.write_workers`` threads encode and write while the
    next batch is read (at most two batches per writer in flight, so memory stays bounded)."""
    def write(start: int, batch: np.ndarray) -> None:
        with timer("write"):
            writer.write_tiles(label, start, batch)

    workers = max(1, int(getattr(config, "write_workers", 1)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tile-write") as pool:
        pending: deque[Future] = deque()
        for start, batch in read_tiles(reader, xys, downsample, config, timer):
            pending.append(pool.submit(write, start, batch))
            while len(pending) > 2 * workers:
                pending.popleft().result()
            progress(len(batch))
        while pending:
            pending.popleft().result()
