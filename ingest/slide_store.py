"""The zarr v3 slide store: one group per slide, written atomically, read back for training and ``info``.

Layout::

    STORE/                         attrs: format, format_version
      <slide_id>/                  attrs: source, reader, mpp, objective_power, level0 size, tile_size,
                                          scales {label: downsample, level, tiles}, timings, complete
        tiles/<scale>              (N, T, T, 3) uint8, one tile per inner chunk, sharded, Blosc-zstd + bitshuffle
        coords/<scale>             (N, 2) int64   level-0 (x, y) of each tile's top-left corner
        tissue/<scale>             (N,) float32   tissue fraction of each tile
        multiscale/<scale>         (N, F, T, T, 3) uint8   concentric fields of view 1x/2x/4x/8x (optional)
        thumbnail                  (h, w, 3) uint8  and  tissue_mask (h, w) bool

A slide is built under ``<slide_id>.partial`` and renamed into place after ``complete`` is set: a slide folder
without ``.partial`` is always whole, and a rerun redoes any ``.partial`` one from scratch.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.shards import ShardWriter

FORMAT = "histo-bench/slide-store"
FORMAT_VERSION = 1
PARTIAL = ".partial"


class SlideStoreError(RuntimeError):
    """A slide store that cannot be created, read, or is of another format."""


def _zarr():
    import zarr

    return zarr


def init_store(path: str | Path) -> Path:
    """Create the store root (or check an existing one); raises :class:`SlideStoreError` when unwritable."""
    path = Path(path)
    zarr = _zarr()
    try:
        if (path / "zarr.json").exists():
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
            if attrs.get("format") != FORMAT:
                raise SlideStoreError(f"{path}: exists and is not a histo-bench slide store")
        else:
            path.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(str(path), mode="w")
            group.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION})
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SlideStoreError(f"{path}: cannot write the store ({exc.strerror or exc})") from exc
    return path


def slide_status(store: str | Path, slide_id: str) -> str:
    """``complete``, ``partial`` (an interrupted run) or ``missing``."""
    store = Path(store)
    final = store / slide_id
    if (final / "zarr.json").exists():
        try:
            if _zarr().open_group(str(final), mode="r").attrs.get("complete"):
                return "complete"
        except Exception:
            pass
        return "partial"
    return "partial" if (store / (slide_id + PARTIAL)).exists() else "missing"


def _blosc(clevel: int):
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")


class SlideWriter:
    """Builds one slide group under ``<slide_id>.partial``; :meth:`finalize` renames it into place."""

    def __init__(self, store: str | Path, slide_id: str, tile_size: int, *, shard_size: int = 64,
                 clevel: int = 3) -> None:
        self.store = Path(store)
        self.slide_id = slide_id
        self.tile_size = tile_size
        self.shard_size = shard_size
        self.clevel = clevel
        self.partial = self.store / (slide_id + PARTIAL)
        for stale in (self.partial, self.store / slide_id):
            if stale.exists():
                shutil.rmtree(stale)
        self.group = _zarr().open_group(str(self.partial), mode="w")
        self._writers: dict[str, ShardWriter | None] = {}

    def create_scale(self, label: str, n: int, fields: int = 0) -> None:
        """Arrays for ``n`` tiles of scale ``label`` (plus ``fields`` concentric views per tile when > 0)."""
        t = self.tile_size
        cap = max(n, 1)
        shard = min(self.shard_size, cap)
        self.group.require_group("tiles").create_array(
            label, shape=(n, t, t, 3), dtype="uint8", chunks=(1, t, t, 3), shards=(shard, t, t, 3),
            compressors=_blosc(self.clevel), fill_value=0)
        self.group.require_group("coords").create_array(label, shape=(n, 2), dtype="int64", chunks=(cap, 2))
        self.group.require_group("tissue").create_array(label, shape=(n,), dtype="float32", chunks=(cap,))
        if fields:
            self.group.require_group("multiscale").create_array(
                label, shape=(n, fields, t, t, 3), dtype="uint8", chunks=(1, fields, t, t, 3),
                shards=(shard, fields, t, t, 3), compressors=_blosc(self.clevel), fill_value=0)

    def write_tiles(self, label: str, start: int, tiles: np.ndarray, kind: str = "tiles") -> None:
        """Write ``tiles`` at ``start``; whole shards go straight to their files (:mod:`ingest.shards`)."""
        name = f"{kind}/{label}"
        if name not in self._writers:
            self._writers[name] = ShardWriter.open(self.partial / kind / label)
        fast = self._writers[name]
        n = self.group[name].shape[0]
        if fast is not None and start % fast.layout.shard_size == 0:
            size = fast.layout.shard_size
            whole = len(tiles) if start + len(tiles) == n else len(tiles) - len(tiles) % size
            for k in range(0, whole, size):
                fast.write_shard((start + k) // size, tiles[k:k + size])
            tiles, start = tiles[whole:], start + whole
        if len(tiles):
            self.group[name][start:start + len(tiles)] = tiles

    def write_meta(self, label: str, coords: np.ndarray, tissue: np.ndarray) -> None:
        self.group[f"coords/{label}"][:] = coords
        self.group[f"tissue/{label}"][:] = tissue

    def write_thumbnail(self, thumbnail: np.ndarray, mask: np.ndarray) -> None:
        self.group.create_array("thumbnail", data=thumbnail, chunks=thumbnail.shape)
        self.group.create_array("tissue_mask", data=mask, chunks=mask.shape)

    def finalize(self, attrs: dict[str, Any]) -> Path:
        self.group.attrs.update({**attrs, "complete": True})
        final = self.store / self.slide_id
        os.replace(self.partial, final)
        return final


@dataclass
class SlideInfo:
    """One finished slide of a store, as ``info`` shows it."""

    slide_id: str
    attrs: dict[str, Any]

    @property
    def tiles(self) -> dict[str, int]:
        return {label: int(s["tiles"]) for label, s in self.attrs.get("scales", {}).items()}


class SlideStore:
    """Read access to a slide store."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise SlideStoreError(f"{self.path}: no such slide store")
        self.group = _zarr().open_group(str(self.path), mode="r")
        if self.group.attrs.get("format") != FORMAT:
            raise SlideStoreError(f"{self.path}: not a histo-bench slide store")

    def slide_ids(self) -> list[str]:
        """Finished slides (interrupted ones, still ``.partial``, are not listed)."""
        return sorted(p.name for p in self.path.iterdir()
                      if p.is_dir() and not p.name.endswith(PARTIAL) and slide_status(self.path, p.name) == "complete")

    def partial_ids(self) -> list[str]:
        return sorted(p.name[: -len(PARTIAL)] for p in self.path.iterdir() if p.name.endswith(PARTIAL))

    def slide(self, slide_id: str) -> SlideInfo:
        return SlideInfo(slide_id, dict(self.group[slide_id].attrs))

    def tiles(self, slide_id: str, scale: str, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self.group[f"{slide_id}/tiles/{scale}"][indices]

    def coords(self, slide_id: str, scale: str) -> np.ndarray:
        return self.group[f"{slide_id}/coords/{scale}"][:]

    def tissue(self, slide_id: str, scale: str) -> np.ndarray:
        return self.group[f"{slide_id}/tissue/{scale}"][:]

    def multiscale(self, slide_id: str, scale: str, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self.group[f"{slide_id}/multiscale/{scale}"][indices]
