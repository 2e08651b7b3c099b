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
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numcodecs import Blosc, blosc

_EMPTY = 2**64 - 1


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
                  and codec["name"] == "sharding_indexed" and inner == ["bytes", "blosc"]
                  and index_codecs == ["bytes", "crc32c"] and endian == "little"
                  and cfg.get("index_location", "end") == "end" and len(shape) >= 2
                  and tuple(cfg["chunk_shape"]) == (1, *shape[1:]) and shard_shape[1:] == shape[1:]
                  and key.get("name") == "default")
        except (OSError, KeyError, ValueError, TypeError):
            return None
        if not ok:
            return None
        separator = (key.get("configuration") or {}).get("separator", "/")
        return cls(array_dir, shape, int(shard_shape[0]), separator, dict(cfg["codecs"][1].get("configuration", {})))

    def shard_file(self, shard: int) -> Path:
        return self.array_dir / self.separator.join(["c", str(shard), *["0"] * (len(self.shape) - 1)])

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])


class ShardedImageReader:
    """Reads item ``i`` of a sharded array (see the module doc)."""

    def __init__(self, layout: ShardLayout) -> None:
        self.layout = layout
        self.shape = layout.shape
        self.shard_size = layout.shard_size
        self._indexes: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._item_nbytes = int(np.prod(layout.item_shape))

    @classmethod
    def open(cls, array_dir: str | Path) -> ShardedImageReader | None:
        layout = ShardLayout.open(array_dir)
        return cls(layout) if layout is not None else None

    def _shard_file(self, shard: int) -> Path:
        return self.layout.shard_file(shard)

    def _index(self, shard: int) -> np.ndarray | None:
        index = self._indexes.get(shard)
        if index is not None:
            return index
        path = self._shard_file(shard)
        n_index = self.shard_size * 16
        try:
            with open(path, "rb") as fh:
                fh.seek(-(n_index + 4), os.SEEK_END)
                raw = fh.read(n_index + 4)
        except FileNotFoundError:
            return None  # an all-empty shard is not written: its items are the fill value
        if _crc32c(raw[:n_index]) != int.from_bytes(raw[n_index:], "little"):
            raise OSError(f"{path}: shard index checksum mismatch (corrupt store file)")
        index = np.frombuffer(raw[:n_index], dtype="<u8").reshape(self.shard_size, 2)
        with self._lock:
            self._indexes[shard] = index
        return index

    def read(self, i: int) -> np.ndarray:
        """Item ``i`` as a uint8 array of the item shape."""

        shard, j = divmod(int(i), self.shard_size)
        index = self._index(shard)
        if index is None or int(index[j, 0]) == _EMPTY:
            return np.zeros(self.layout.item_shape, dtype=np.uint8)
        offset, nbytes = int(index[j, 0]), int(index[j, 1])
        fd = os.open(self._shard_file(shard), os.O_RDONLY)
        try:
            raw = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        data = blosc.decompress(raw)
        if len(data) != self._item_nbytes:
            raise OSError(f"{self._shard_file(shard)}: chunk {j} decodes to {len(data)} bytes, "
                          f"expected {self._item_nbytes}")
        return np.frombuffer(data, dtype=np.uint8).reshape(self.layout.item_shape)


class ShardWriter:
    """Writes whole shards of a sharded array created by zarr (which must stay the only writer of the metadata)."""

    def __init__(self, layout: ShardLayout) -> None:

        self.layout = layout
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        cfg = layout.blosc
        self.codec = Blosc(cname=cfg.get("cname", "zstd"), clevel=int(cfg.get("clevel", 5)),
                           shuffle=shuffle[cfg.get("shuffle", "bitshuffle")], blocksize=int(cfg.get("blocksize", 0)))

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
        encoded = [self.codec.encode(np.ascontiguousarray(item)) for item in items]
        index = np.full((self.layout.shard_size, 2), _EMPTY, dtype="<u8")
        offset = 0
        for j, blob in enumerate(encoded):
            index[j] = (offset, len(blob))
            offset += len(blob)
        raw_index = index.tobytes()
        path = self.layout.shard_file(shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            for blob in encoded:
                fh.write(blob)
            fh.write(raw_index)
            fh.write(_crc32c(raw_index).to_bytes(4, "little"))
        os.replace(tmp, path)
