"""Random access to single images in a sharded zarr v3 array, straight from the shard files.

The zarr v3 sharding codec is a published format: a shard file is the concatenated encoded inner chunks followed by
an index of ``(offset, nbytes)`` uint64 pairs (little-endian) and its CRC32C. For the image stores written by
:class:`ingest.store.ImageStoreWriter` (one image per inner chunk, ``bytes`` + ``blosc`` codecs) reading one image is
one ``pread`` and one Blosc decode. Going through zarr-python's generic indexing costs several times that per image
(its orthogonal integer indexing ~20x), which matters for random-access training batches. Shard indexes are read
once per shard and cached; every index is CRC-checked. Any array whose metadata is not exactly this layout is
left to zarr (:func:`ShardedImageReader.open` returns None).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

_EMPTY = np.uint64(2**64 - 1)


def _crc32c(data: bytes) -> int:
    import google_crc32c  # installed with zarr (its crc32c codec)

    return google_crc32c.value(data)


class ShardedImageReader:
    """Reads image ``i`` of an (N, H, W, C) uint8 array stored as shards of ``S`` single-image inner chunks."""

    def __init__(self, array_dir: Path, shape: tuple[int, ...], shard_size: int, separator: str) -> None:
        self.array_dir = array_dir
        self.shape = shape
        self.shard_size = shard_size
        self.separator = separator
        self._indexes: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._image_nbytes = int(np.prod(shape[1:]))

    @classmethod
    def open(cls, array_dir: str | Path) -> ShardedImageReader | None:
        """A reader for ``array_dir`` (a zarr v3 array folder), or None when its layout is not the supported one."""
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
        except (OSError, KeyError, ValueError, TypeError):
            return None
        endian = (cfg["index_codecs"][0].get("configuration") or {}).get("endian", "little")
        ok = (meta.get("zarr_format") == 3 and meta["data_type"] == "uint8" and codec["name"] == "sharding_indexed"
              and inner == ["bytes", "blosc"] and index_codecs == ["bytes", "crc32c"] and endian == "little"
              and cfg.get("index_location", "end") == "end" and len(shape) == 4
              and tuple(cfg["chunk_shape"]) == (1, *shape[1:]) and shard_shape[1:] == shape[1:]
              and key.get("name") == "default")
        if not ok:
            return None
        separator = (key.get("configuration") or {}).get("separator", "/")
        return cls(array_dir, shape, int(shard_shape[0]), separator)

    def _shard_file(self, shard: int) -> Path:
        return self.array_dir / self.separator.join(["c", str(shard), "0", "0", "0"])

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
            return None  # an all-empty shard is not written: its images are the fill value
        if _crc32c(raw[:n_index]) != int.from_bytes(raw[n_index:], "little"):
            raise OSError(f"{path}: shard index checksum mismatch (corrupt store file)")
        index = np.frombuffer(raw[:n_index], dtype="<u8").reshape(self.shard_size, 2)
        with self._lock:
            self._indexes[shard] = index
        return index

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as an (H, W, C) uint8 array."""
        from numcodecs import blosc

        shard, j = divmod(int(i), self.shard_size)
        index = self._index(shard)
        if index is None or index[j, 0] == _EMPTY:
            return np.zeros(self.shape[1:], dtype=np.uint8)
        offset, nbytes = int(index[j, 0]), int(index[j, 1])
        fd = os.open(self._shard_file(shard), os.O_RDONLY)
        try:
            raw = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        data = blosc.decompress(raw)
        if len(data) != self._image_nbytes:
            raise OSError(f"{self._shard_file(shard)}: chunk {j} decodes to {len(data)} bytes, "
                          f"expected {self._image_nbytes}")
        return np.frombuffer(data, dtype=np.uint8).reshape(self.shape[1:])
