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

A slide is built under ``<slide_id>.partial`` by the one process that holds ``<slide_id>.lock``
(:mod:`ingest.locks`) and renamed into place after ``complete`` is set: a slide folder without ``.partial`` is
always whole, and a rerun redoes any ``.partial`` one from scratch. "Complete" is trusted only after every array
the slide's attributes promise is found with the promised shape (:func:`slide_problem`). Every shard file of the
pixel arrays is written (all-zero tiles included), so a missing or truncated one is damage: reading the store
raises :class:`~ingest.shards.ShardError` naming it (:func:`check_slide_shards`), never zeros, and a rerun of the
tiler tiles such a slide again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from histo_bench.errors import HistoBenchError
from histo_bench.files import discard_dir
from ingest.disk import writing
from ingest.locks import WorkLock, create_exclusive, sweep_once
from ingest.output_guard import refusal, store_format
from ingest.shards import ShardLayout, ShardWriter
from ingest.tile_codecs import zarr_codecs

log = logging.getLogger(__name__)

FORMAT = "histo-bench/slide-store"
FORMAT_VERSION = 1
PARTIAL = ".partial"
#: The arrays of a slide that hold pixels (sharded, one tile per inner chunk).
PIXEL_KINDS = ("tiles", "multiscale")
#: Appended to the message of a damaged slide's :class:`~ingest.shards.ShardError`.
DAMAGED_HINT = ": rerun histo-ingest tile on its slides (a damaged slide is tiled again)"


class SlideStoreError(HistoBenchError, RuntimeError):
    """A slide store that cannot be created, read, or is of another format."""


def init_store(path: str | Path) -> Path:
    """Create the store root (or check an existing one). Raises :class:`SlideStoreError` when ``path`` is not a
    slide store and not empty (nothing in it is touched: :func:`ingest.output_guard.refusal`) or is unwritable.

    The root's ``zarr.json`` is created at most once even by racing processes (:func:`_create_root`), so a second
    tiler never clears what a first one wrote."""
    path = Path(path)
    reason = refusal(path, FORMAT, "slide store")
    if reason:
        raise SlideStoreError(reason)
    try:
        path.mkdir(parents=True, exist_ok=True)
        sweep_once(path)  # private files of creators killed mid-write (zarr.json, slide locks)
        if store_format(path) != FORMAT:
            _create_root(path)
        if store_format(path) != FORMAT:
            raise SlideStoreError(f"{path}: exists and is not a histo-bench slide store")
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SlideStoreError(f"{path}: cannot write the store ({exc.strerror or exc})") from exc
    return path


def _create_root(path: Path) -> None:
    """Write the root's ``zarr.json`` (a zarr v3 group holding the format attributes) iff there is none: in one
    exclusive create, so it never exists without its ``format`` and racing processes keep the first one."""
    meta = {"zarr_format": 3, "node_type": "group",
            "attributes": {"format": FORMAT, "format_version": FORMAT_VERSION}}
    create_exclusive(path / "zarr.json", json.dumps(meta, indent=2).encode())


def slide_lock(store: str | Path, slide_id: str, what: str = "tiling") -> WorkLock:
    """The lock a process holds while it writes slide ``slide_id`` of ``store`` (``<store>/<slide_id>.lock``)."""
    return WorkLock(Path(store) / f"{slide_id}.lock", f"{what} {slide_id}")


def _meta(path: Path) -> dict[str, Any] | None:
    """The ``zarr.json`` of a zarr node folder (None when it has none); a file that cannot be parsed is a
    ValueError, a filesystem error an OSError (never taken for "incomplete": that could discard a whole slide)."""
    try:
        return json.loads((path / "zarr.json").read_text())
    except FileNotFoundError:
        return None


def slide_problem(store: str | Path, slide_id: str) -> str | None:
    """None when slide ``slide_id`` is complete and every array its attributes promise exists with the promised
    shape; else why it is not (``missing``, interrupted, an array absent or of the wrong shape). Reads the
    metadata files directly (one small read per array). Raises OSError for a filesystem error."""
    final = Path(store) / slide_id
    try:
        meta = _meta(final)
    except ValueError as exc:
        return f"unreadable metadata ({exc})"
    if meta is None:
        return "interrupted (still .partial)" if (Path(store) / (slide_id + PARTIAL)).exists() else "missing"
    attrs = meta.get("attributes", {})
    if not attrs.get("complete"):
        return "not marked complete"
    try:
        t = int(attrs["tile_size"])
        expected: dict[str, tuple[int, ...] | None] = {"thumbnail": None, "tissue_mask": None}
        fields = list(attrs.get("multiscale_fields") or [])
        for k, (label, scale) in enumerate(attrs["scales"].items()):
            n = int(scale["tiles"])
            expected.update({f"tiles/{label}": (n, t, t, 3), f"coords/{label}": (n, 2), f"tissue/{label}": (n,)})
            if fields and k == 0:
                expected[f"multiscale/{label}"] = (n, len(fields), t, t, 3)
        for key, shape in expected.items():
            array = _meta(final / key)
            if array is None or array.get("node_type") != "array":
                return f"array {key} is missing"
            if shape is not None and tuple(array["shape"]) != shape:
                return f"array {key} has shape {tuple(array['shape'])}, expected {shape}"
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"unreadable metadata ({type(exc).__name__}: {exc})".splitlines()[0]
    return None


def check_slide_shards(store: str | Path, slide_id: str, *, read_index: bool = False,
                       hint: str = DAMAGED_HINT) -> int:
    """Raise :class:`~ingest.shards.ShardError` naming the first shard file of slide ``slide_id``'s pixel arrays
    (:data:`PIXEL_KINDS`) that is missing or, with ``read_index``, whose index is truncated or corrupt; returns the
    number of shards checked. One ``stat`` (or one small read) per shard, no tile decoded."""
    checked = 0
    for kind in PIXEL_KINDS:
        folder = Path(store) / slide_id / kind
        if not folder.is_dir():
            continue
        for array_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            layout = ShardLayout.open(array_dir)
            if layout is not None:
                checked += layout.check(read_index=read_index, hint=hint, noun=kind)
    return checked


def _discard(path: Path, store: Path) -> None:
    """Remove a slide folder of ``store``: renamed aside first (atomic), so a kill during the removal leaves a
    hidden ``.trash-`` folder, never a half-deleted slide under a slide's name."""
    if path.resolve().parent != store.resolve():
        raise SlideStoreError(f"{path}: refusing to remove a folder outside the store {store}")
    discard_dir(path)


def check_slide_id(slide_id: str) -> str | None:
    """Why ``slide_id`` cannot name a slide in a store (None when it can): it must be a plain folder name that
    does not collide with the store's own names."""
    if not slide_id or slide_id in (".", "..") or slide_id.startswith(".") or "/" in slide_id or "\\" in slide_id:
        return f"{slide_id!r} cannot name a slide folder (empty, hidden or a path); rename the file"
    for reserved in (PARTIAL, ".lock", ".features"):
        if slide_id.endswith(reserved):
            return f"{slide_id!r} ends in {reserved!r}, a name the store uses itself; rename the file"
    return None


def slide_status(store: str | Path, slide_id: str) -> str:
    """``complete`` (verified by :func:`slide_problem`), ``partial`` (interrupted or broken) or ``missing``."""
    problem = slide_problem(store, slide_id)
    if problem is None:
        return "complete"
    return "missing" if problem == "missing" else "partial"


class SlideWriter:
    """Builds one slide group under ``<slide_id>.partial``; :meth:`finalize` renames it into place."""

    def __init__(self, store: str | Path, slide_id: str, tile_size: int, *, shard_size: int = 64,
                 clevel: int = 3, codec: str = "blosc-zstd", quality: int = 90) -> None:
        self.store = Path(store)
        self.slide_id = slide_id
        self.tile_size = tile_size
        self.shard_size = shard_size
        self.clevel = clevel
        self.codec, self.quality = codec, quality  # the default of create_scale (ingest.tile_codecs)
        self.partial = self.store / (slide_id + PARTIAL)
        reason = check_slide_id(slide_id)
        if reason:
            raise SlideStoreError(reason)
        for stale in (self.partial, self.store / slide_id):  # the caller holds the slide's lock: nobody else's
            if stale.exists():
                log.info("%s: discarding %s (%s)", slide_id, stale, slide_problem(store, slide_id) or "damaged shards")
                _discard(stale, self.store)
        with writing(self.partial):
            self.group = zarr.open_group(str(self.partial), mode="w")
        self._writers: dict[str, ShardWriter | None] = {}

    def create_scale(self, label: str, n: int, fields: int = 0, codec: str | None = None) -> None:
        """Arrays for ``n`` tiles of scale ``label`` (plus ``fields`` concentric views per tile when > 0), encoded
        with ``codec`` (:data:`ingest.tile_codecs.TILE_CODECS` but ``auto``; the writer's default when None)."""
        with writing(self.partial):
            self._create_scale(label, n, fields, zarr_codecs(codec or self.codec, self.clevel, self.quality))

    def _create_scale(self, label: str, n: int, fields: int, codecs: dict) -> None:
        t = self.tile_size
        cap = max(n, 1)
        shard = min(self.shard_size, cap)
        self.group.require_group("tiles").create_array(
            label, shape=(n, t, t, 3), dtype="uint8", chunks=(1, t, t, 3), shards=(shard, t, t, 3),
            fill_value=0, **codecs)
        self.group.require_group("coords").create_array(label, shape=(n, 2), dtype="int64", chunks=(cap, 2))
        self.group.require_group("tissue").create_array(label, shape=(n,), dtype="float32", chunks=(cap,))
        if fields:
            self.group.require_group("multiscale").create_array(
                label, shape=(n, fields, t, t, 3), dtype="uint8", chunks=(1, fields, t, t, 3),
                shards=(shard, fields, t, t, 3), fill_value=0, **codecs)

    def write_tiles(self, label: str, start: int, tiles: np.ndarray, kind: str = "tiles") -> None:
        """Write ``tiles`` at ``start``; whole shards go straight to their files (:mod:`ingest.shards`)."""
        name = f"{kind}/{label}"
        if name not in self._writers:
            self._writers[name] = ShardWriter.open(self.partial / kind / label)
        fast = self._writers[name]
        first = fast.layout.shard_file(start // fast.layout.shard_size) if fast is not None else self.partial / name
        with writing(first):  # a full disk: one error naming the shard file
            self._write_tiles(name, fast, start, tiles)

    def _write_tiles(self, name: str, fast: ShardWriter | None, start: int, tiles: np.ndarray) -> None:
        n = self.group[name].shape[0]
        if fast is not None and start % fast.layout.shard_size == 0:
            size = fast.layout.shard_size
            whole = len(tiles) if start + len(tiles) == n else len(tiles) - len(tiles) % size
            for k in range(0, whole, size):
                fast.write_shard((start + k) // size, tiles[k:k + size])
            tiles, start = tiles[whole:], start + whole
        if len(tiles):
            self.group[name][start:start + len(tiles)] = tiles

    def write_encoded_tiles(self, label: str, start: int, blobs: list[bytes]) -> None:
        """Write tiles already encoded with the array's codec (e.g. a slide's own JPEG tiles) at ``start``, a
        shard boundary, as whole shards (the last may be short only at the end of the array)."""
        name = f"tiles/{label}"
        if name not in self._writers:
            self._writers[name] = ShardWriter.open(self.partial / "tiles" / label)
        fast = self._writers[name]
        if fast is None or start % fast.layout.shard_size:
            raise SlideStoreError(f"{name}: encoded tiles must start on a shard of a sharded array")
        size = fast.layout.shard_size
        with writing(fast.layout.shard_file(start // size)):
            for k in range(0, len(blobs), size):
                fast.write_encoded((start + k) // size, blobs[k:k + size])

    def write_meta(self, label: str, coords: np.ndarray, tissue: np.ndarray) -> None:
        with writing(self.partial):
            self.group[f"coords/{label}"][:] = coords
            self.group[f"tissue/{label}"][:] = tissue

    def write_thumbnail(self, thumbnail: np.ndarray, mask: np.ndarray) -> None:
        with writing(self.partial):
            self.group.create_array("thumbnail", data=thumbnail, chunks=thumbnail.shape)
            self.group.create_array("tissue_mask", data=mask, chunks=mask.shape)

    def finalize(self, attrs: dict[str, Any], still_mine=lambda: True) -> Path:
        """Set ``complete`` and rename the slide into place, unless ``still_mine()`` says the slide's lock was
        taken over meanwhile (a holder that stalled past the stale age must not publish over the new one)."""
        with writing(self.partial / "zarr.json"):
            self.group.attrs.update({**attrs, "complete": True})
        if not still_mine():
            raise SlideStoreError(f"{self.slide_id}: this process lost the slide's lock while tiling it (stalled "
                                  "past the stale age?); another worker redoes it, this result is dropped")
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
        self.group = zarr.open_group(str(self.path), mode="r")
        if self.group.attrs.get("format") != FORMAT:
            raise SlideStoreError(f"{self.path}: not a histo-bench slide store")
        self._verified: set[str] = set()

    def slide_ids(self) -> list[str]:
        """Finished slides (interrupted ones, still ``.partial``, are not listed). Raises
        :class:`~ingest.shards.ShardError` when a shard file of one of them is missing (one ``stat`` per shard)."""
        ids = sorted(p.name for p in self.path.iterdir()
                     if p.is_dir() and check_slide_id(p.name) is None
                     and slide_status(self.path, p.name) == "complete")
        for sid in ids:
            check_slide_shards(self.path, sid)
        return ids

    def verify(self) -> tuple[int, int]:
        """Check every shard file of every finished slide: present, index whole and CRC-valid, chunks inside the
        file (no tile decoded). Raises :class:`~ingest.shards.ShardError` naming the first bad one; returns
        (slides, shards) checked."""
        ids = self.slide_ids()
        shards = sum(check_slide_shards(self.path, sid, read_index=True) for sid in ids)
        self._verified.update(ids)
        return len(ids), shards

    def _checked(self, slide_id: str) -> str:
        """``slide_id``, after its shard indexes were checked once (zarr would read a missing shard as zeros and
        fail on a truncated one with a checksum traceback)."""
        if slide_id not in self._verified:
            check_slide_shards(self.path, slide_id, read_index=True)
            self._verified.add(slide_id)
        return slide_id

    def default_scale(self) -> str:
        """The first scale of the first finished slide (the first ``--mag`` it was tiled at): what commands use
        when no ``--scale`` is given."""
        for sid in self.slide_ids():
            scales = list(self.slide(sid).attrs.get("scales", {}))
            if scales:
                return scales[0]
        raise SlideStoreError(f"{self.path}: no finished slide with tiles (tile slides into it first)")

    def partial_ids(self) -> list[str]:
        return sorted(p.name[: -len(PARTIAL)] for p in self.path.iterdir() if p.name.endswith(PARTIAL))

    def slide(self, slide_id: str) -> SlideInfo:
        return SlideInfo(slide_id, dict(self.group[slide_id].attrs))

    def tiles(self, slide_id: str, scale: str, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self.group[f"{self._checked(slide_id)}/tiles/{scale}"][indices]

    def coords(self, slide_id: str, scale: str) -> np.ndarray:
        return self.group[f"{slide_id}/coords/{scale}"][:]

    def tissue(self, slide_id: str, scale: str) -> np.ndarray:
        return self.group[f"{slide_id}/tissue/{scale}"][:]

    def multiscale(self, slide_id: str, scale: str, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self.group[f"{self._checked(slide_id)}/multiscale/{scale}"][indices]
