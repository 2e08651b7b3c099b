"""Direct reads and writes of whole items in sharded zarr v3 arrays, straight from and to the shard files.

The zarr v3 sharding codec is a published format: a shard file is the concatenated encoded inner chunks followed
by an index of ``(offset, nbytes)`` uint64 pairs (little-endian, ``2**64 - 1`` for an absent chunk) and the index's
CRC32C. The stores histo-bench writes have one item (an image, a tile) per inner chunk and the ``bytes`` +
``blosc`` codec chain, so reading an item is one ``pread`` + one Blosc decode and writing a shard is one Blosc
encode per item + one file write. Through zarr-python's generic machinery the same costs several times more per
item (integer-array indexing ~20x on reads; ~2x on writes of 224 px tiles), which matters on the hot paths
(random training batches, tiling). Shard indexes are CRC-checked and cached. Any array whose metadata is not
exactly this layout is left to zarr (:meth:`ShardLayout.open` returns None). The files written are ordinary zarr
shards: zarr reads them back (tested).

Every shard of a finished array is written (the stores set zarr's ``write_empty_chunks``), so a shard file that is
missing is damage, never "all fill value": zarr would read it as zeros without a word, this module raises
:class:`ShardError` naming the file (:meth:`ShardLayout.check`, and every read).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numcodecs import Blosc, blosc

from histo_bench.errors import HistoBenchError
from ingest.jpeg_items import JPEG_CODEC, JpegItemCodec, jpeg_decode

_EMPTY = 2**64 - 1


class ShardError(HistoBenchError, OSError):
    """A shard file of a written array that is missing, truncated or corrupt; the message names the file."""

    def __str__(self) -> str:  # OSError's would show the args tuple
        return str(self.args[0]) if self.args else ""


def _crc32c(data: bytes) -> int:
    import google_crc32c  # installed with zarr (its crc32c codec)

    return google_crc32c.value(data)


@dataclass(frozen=True)
class ShardLayout:
    """The geometry of a sharded uint8 array with one item per inner chunk."""

    array_dir: Path
    shape: tuple[int, ...]
    shard_size: int
    separator: str
    blosc: dict
    #: the inner chunk codec: ``blosc`` (config in ``blosc``) or ``jpeg`` (:mod:`ingest.jpeg_items`, quality in
    #: ``blosc["quality"]``)
    codec: str = "blosc"

    @classmethod
    def open(cls, array_dir: str | Path) -> ShardLayout | None:
        """The layout of ``array_dir`` (a zarr v3 array folder), or None when it is not the supported one."""
        array_dir = Path(array_dir)
        try:
            meta = json.loads((array_dir / "zarr.json").read_text())
            (codec,) = meta["codecs"]
            cfg = codec["configuration"]
            inner = [c["name"] for c in cfg["codecs"]]
            index_codecs = [c["name"] for c in cfg["index_codecs"]]
            shape = tuple(meta["shape"])
            shard_shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
            key = meta["chunk_key_encoding"]
            endian = (cfg["index_codecs"][0].get("configuration") or {}).get("endian", "little")
            ok = (meta.get("zarr_format") == 3 and meta["data_type"] == "uint8"
                  and codec["name"] == "sharding_indexed" and inner in (["bytes", "blosc"], [JPEG_CODEC])
                  and index_codecs == ["bytes", "crc32c"] and endian == "little"
                  and cfg.get("index_location", "end") == "end" and len(shape) >= 2
                  and tuple(cfg["chunk_shape"]) == (1, *shape[1:]) and shard_shape[1:] == shape[1:]
                  and key.get("name") == "default")
        except (OSError, KeyError, ValueError, TypeError):
            return None
        if not ok:
            return None
        separator = (key.get("configuration") or {}).get("separator", "/")
        inner_cfg = dict(cfg["codecs"][-1].get("configuration") or {})
        return cls(array_dir, shape, int(shard_shape[0]), separator, inner_cfg,
                   "jpeg" if inner == [JPEG_CODEC] else "blosc")

    def shard_file(self, shard: int) -> Path:
        return self.array_dir / self.separator.join(["c", str(shard), *["0"] * (len(self.shape) - 1)])

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    @property
    def n_shards(self) -> int:
        return -(-int(self.shape[0]) // self.shard_size)

    def items_of(self, shard: int, noun: str = "items") -> str:
        """Which items shard ``shard`` holds, for messages (``images 96-127 of 960``)."""
        start = shard * self.shard_size
        return f"{noun} {start}-{min(start + self.shard_size, self.shape[0]) - 1} of {self.shape[0]}"

    def check(self, *, read_index: bool = False, hint: str = "", noun: str = "items") -> int:
        """Raise :class:`ShardError` (naming the first bad file, ``hint`` appended) unless every shard of the array
        exists and, with ``read_index``, has an index that is whole, CRC-valid and inside the file. Lists the
        files only (one ``stat`` per shard) or reads only the indexes (one small read per shard); no pixel is
        decoded. Returns the number of shards checked."""
        for shard in range(self.n_shards):
            if read_index:
                read_shard_index(self, shard, hint, noun)
            elif not self.shard_file(shard).is_file():
                raise missing_shard(self, shard, hint, noun)
        return self.n_shards


def missing_shard(layout: ShardLayout, shard: int, hint: str = "", noun: str = "items") -> ShardError:
    return ShardError(f"{layout.shard_file(shard)}: shard file is missing ({layout.items_of(shard, noun)} would "
                      f"read as zeros); the store is damaged{hint}")


def read_shard_index(layout: ShardLayout, shard: int, hint: str = "", noun: str = "items") -> np.ndarray:
    """The (shard_size, 2) ``(offset, nbytes)`` index of shard file ``shard``, checked: the file exists, is long
    enough, its CRC32C matches and every chunk lies inside the file; else :class:`ShardError` naming the file."""
    path = layout.shard_file(shard)
    n_index = layout.shard_size * 16
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < n_index + 4:
                raise ShardError(f"{path}: truncated shard file ({size} bytes, shorter than its {n_index + 4}-byte "
                                 f"index; {layout.items_of(shard, noun)}); the store is damaged{hint}")
            fh.seek(-(n_index + 4), os.SEEK_END)
            raw = fh.read(n_index + 4)
    except FileNotFoundError:
        raise missing_shard(layout, shard, hint, noun) from None
    except ShardError:
        raise
    except OSError as exc:
        raise ShardError(f"{path}: cannot read the shard file ({exc.strerror or exc}){hint}") from exc
    if _crc32c(raw[:n_index]) != int.from_bytes(raw[n_index:], "little"):
        raise ShardError(f"{path}: shard index checksum mismatch (truncated or corrupt shard file; "
                         f"{layout.items_of(shard, noun)}); the store is damaged{hint}")
    index = np.frombuffer(raw[:n_index], dtype="<u8").reshape(layout.shard_size, 2)
    present = index[:, 0] != _EMPTY
    if present.any() and int((index[present, 0] + index[present, 1]).max()) > size - n_index - 4:
        raise ShardError(f"{path}: shard index points past the end of the file (truncated or corrupt shard file; "
                         f"{layout.items_of(shard, noun)}); the store is damaged{hint}")
    return index


class ShardedImageReader:
    """Reads item ``i`` of a sharded array (see the module doc)."""

    def __init__(self, layout: ShardLayout) -> None:
        self.layout = layout
        self.shape = layout.shape
        self.shard_size = layout.shard_size
        self._indexes: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._item_nbytes = int(np.prod(layout.item_shape))
        self.hint = ""  # appended to a ShardError's message (what to do about the damage)
        self.noun = "items"  # what the items are, in messages

    @classmethod
    def open(cls, array_dir: str | Path) -> ShardedImageReader | None:
        layout = ShardLayout.open(array_dir)
        return cls(layout) if layout is not None else None

    def _shard_file(self, shard: int) -> Path:
        return self.layout.shard_file(shard)

    def _index(self, shard: int) -> np.ndarray:
        index = self._indexes.get(shard)
        if index is not None:
            return index
        index = read_shard_index(self.layout, shard, self.hint, self.noun)
        with self._lock:
            self._indexes[shard] = index
        return index

    def read(self, i: int) -> np.ndarray:
        """Item ``i`` as a uint8 array of the item shape."""

        shard, j = divmod(int(i), self.shard_size)
        index = self._index(shard)
        if int(index[j, 0]) == _EMPTY:  # an all-zero item that zarr did not store (older stores)
            return np.zeros(self.layout.item_shape, dtype=np.uint8)
        offset, nbytes = int(index[j, 0]), int(index[j, 1])
        fd = os.open(self._shard_file(shard), os.O_RDONLY)
        try:
            raw = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        try:
            if self.layout.codec == "jpeg":
                return jpeg_decode(raw, self.layout.item_shape)
            data = blosc.decompress(raw)
        except (RuntimeError, ValueError) as exc:
            raise ShardError(f"{self._shard_file(shard)}: chunk {j} cannot be decoded ({exc}); the store is "
                             f"damaged{self.hint}") from exc
        if len(data) != self._item_nbytes:
            raise ShardError(f"{self._shard_file(shard)}: chunk {j} decodes to {len(data)} bytes, "
                             f"expected {self._item_nbytes}; the store is damaged{self.hint}")
        return np.frombuffer(data, dtype=np.uint8).reshape(self.layout.item_shape)


#: Blosc's block size for image store chunks: 512 KiB blocks of a bit-shuffled 700x460 BreakHis image compress
#: smaller at zstd level 1 than Blosc's automatic size does at level 3, and encode ~2.5x faster (docs/ingest.md).
IMAGE_BLOCK_BYTES = 512 * 1024


def image_blosc_config(clevel: int) -> dict:
    """The Blosc configuration of an image store's chunks at zstd level ``clevel``, as its zarr.json records it
    (what :func:`blosc_codec` takes): the writer creates the array with it and the ingest's workers encode with it."""
    return {"typesize": 1, "cname": "zstd", "clevel": clevel, "shuffle": "bitshuffle", "blocksize": IMAGE_BLOCK_BYTES}


def blosc_codec(cfg: dict) -> Blosc:
    """The numcodecs Blosc codec of a zarr ``blosc`` codec configuration (``ShardLayout.blosc``)."""
    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    return Blosc(cname=cfg.get("cname", "zstd"), clevel=int(cfg.get("clevel", 5)),
                 shuffle=shuffle[cfg.get("shuffle", "bitshuffle")], blocksize=int(cfg.get("blocksize", 0)))


class ShardWriter:
    """Writes whole shards of a sharded array created by zarr (which must stay the only writer of the metadata)."""

    def __init__(self, layout: ShardLayout) -> None:

        self.layout = layout
        self.codec = (JpegItemCodec(int(layout.blosc.get("quality", 90))) if layout.codec == "jpeg"
                      else blosc_codec(layout.blosc))

    @classmethod
    def open(cls, array_dir: str | Path) -> ShardWriter | None:
        layout = ShardLayout.open(array_dir)
        return cls(layout) if layout is not None else None

    def write_shard(self, shard: int, items: np.ndarray) -> None:
        """Write items ``shard * shard_size ...`` (at most one shard's worth) as shard file ``shard``, atomically."""
        n = len(items)
        if n == 0 or n > self.layout.shard_size or tuple(items.shape[1:]) != self.layout.item_shape:
            raise ValueError(f"expected 1..{self.layout.shard_size} items of shape {self.layout.item_shape}, "
                             f"got {items.shape}")
        if items.dtype != np.uint8:
            raise ValueError(f"expected uint8 items, got {items.dtype}")
        self.write_encoded(shard, [self.codec.encode(np.ascontiguousarray(item)) for item in items])

    def write_encoded(self, shard: int, encoded: list[bytes]) -> None:
        """Write already Blosc-encoded items (:func:`blosc_codec` of the array's config) as shard file ``shard``,
        atomically; an encoder in another process makes the same bytes as :meth:`write_shard`."""
        if not 1 <= len(encoded) <= self.layout.shard_size:
            raise ValueError(f"expected 1..{self.layout.shard_size} encoded items, got {len(encoded)}")
        stream = self.stream(shard)
        try:
            for blob in encoded:
                stream.append(blob)
            stream.commit()
        except BaseException:
            stream.abort()
            raise

    def stream(self, shard: int) -> ShardStream:
        """Shard file ``shard``, to be written one encoded item at a time (see :class:`ShardStream`)."""
        return ShardStream(self.layout, shard)


class ShardStream:
    """One shard file written one encoded item at a time, each item's bytes going to the file as it comes (straight
    from a worker's shared memory: no copy is kept), then published whole by :meth:`commit` (index, CRC, atomic
    rename). Until then it is a temporary file beside the shard, removed by :meth:`abort` (a full disk, say: it
    would hold the space) or, after a kill, by the next run (:func:`ingest.disk.remove_zarr_temporaries`)."""

    def __init__(self, layout: ShardLayout, shard: int) -> None:
        self.layout = layout
        self.path = layout.shard_file(shard)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        self._fh = open(self._tmp, "wb")  # closed by commit or abort
        self._sizes: list[int] = []

    def append(self, blob: bytes | memoryview) -> None:
        if len(self._sizes) >= self.layout.shard_size:
            raise ValueError(f"{self.path}: a shard holds at most {self.layout.shard_size} items")
        self._fh.write(blob)
        self._sizes.append(len(blob))

    def commit(self) -> None:
        """Write the index and its CRC after the items and rename the file into place."""
        if not self._sizes:
            self.abort()
            raise ValueError(f"{self.path}: a shard needs at least one item")
        index = np.full((self.layout.shard_size, 2), _EMPTY, dtype="<u8")
        index[:len(self._sizes), 1] = self._sizes
        index[:len(self._sizes), 0] = np.cumsum([0, *self._sizes[:-1]])
        raw_index = index.tobytes()
        try:
            self._fh.write(raw_index)
            self._fh.write(_crc32c(raw_index).to_bytes(4, "little"))
            self._fh.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the file (idempotent): nothing of this shard is published."""
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()
