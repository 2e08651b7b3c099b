"""Tile codecs of the slide store: lossless Blosc (zstd or lz4) or JPEG, one tile per zarr chunk.

``--codec`` picks how a slide store's tiles are encoded:

* ``blosc-zstd``: lossless, Blosc-zstd + bitshuffle (the store's original codec);
* ``blosc-lz4``: lossless, Blosc-lz4 + byte shuffle: ~10x faster to encode than zstd and barely larger on real
  tissue (decoded JPEG scans hardly compress losslessly: ~1.1x either way);
* ``jpeg``: each tile is one baseline JPEG (``quality``), 6-10x smaller than lossless. When a scale is read from
  a JPEG-tiled slide level whose tiles *are* the store's tiles (same size, grid aligned, no resize), the slide's
  own JPEG bytes are copied into the store without decoding (:mod:`ingest.tile_copy`): lossless with respect
  to the slide file and several times faster. Any JPEG decoder reads the tiles (nvJPEG on a GPU, too);
* ``auto`` (the default): ``jpeg`` where the slide's tiles can be copied, else ``blosc-zstd``.

The JPEG arrays use the zarr v3 array-to-bytes codec :class:`JpegTileCodec` (``"histo_bench.jpeg"``), registered
with zarr when this module is imported (the slide store writer imports it) and declared as a ``zarr.codecs`` entry
point of the package, so plain ``zarr.open`` reads such a store wherever histo-bench is installed. The JPEG bytes
themselves are made and read by :mod:`ingest.jpeg_items`, which the direct shard reads and writes use without
importing zarr.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BloscCodec
from zarr.registry import register_codec

from histo_bench.errors import ConfigError
from ingest.jpeg_items import JPEG_CODEC, jpeg_decode, jpeg_encode

#: The ``--codec`` choices.
TILE_CODECS = ("auto", "blosc-zstd", "blosc-lz4", "jpeg")


def check_codec(codec: str, quality: int) -> None:
    """Raise :class:`ConfigError` unless ``codec`` is one of :data:`TILE_CODECS` and ``quality`` in 1..100."""
    if codec not in TILE_CODECS:
        raise ConfigError(f"--codec {codec}: unknown (choose from {', '.join(TILE_CODECS)})")
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality {quality}: must be in 1..100")


@dataclass(frozen=True)
class JpegTileCodec(ArrayBytesCodec):
    """zarr v3 array-to-bytes codec: a chunk of uint8 RGB pixels (..., H, W, 3) as one JPEG of the chunk's
    rows stacked (a (1, T, T, 3) tile is a T x T JPEG; a (1, F, T, T, 3) multiscale chunk an F*T x T one)."""

    is_fixed_size = False
    quality: int = 90

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JpegTileCodec:
        return cls(quality=int((data.get("configuration") or {}).get("quality", 90)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": JPEG_CODEC, "configuration": {"quality": self.quality}}

    def evolve_from_array_spec(self, array_spec) -> JpegTileCodec:
        return replace(self)

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if str(getattr(dtype, "to_native_dtype", lambda: dtype)()) != "uint8" or shape[-1] != 3:
            raise ValueError(f"{JPEG_CODEC} stores uint8 RGB tiles (shape (..., H, W, 3)), got {dtype} {shape}")

    async def _decode_single(self, chunk_bytes, chunk_spec):
        pixels = jpeg_decode(chunk_bytes.to_bytes(), tuple(chunk_spec.shape))
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(pixels)

    async def _encode_single(self, chunk_array, chunk_spec):
        pixels = np.asarray(chunk_array.as_numpy_array()).reshape(-1, chunk_spec.shape[-2], 3)
        return chunk_spec.prototype.buffer.from_bytes(jpeg_encode(pixels, self.quality))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError  # variable size


register_codec(JPEG_CODEC, JpegTileCodec)


def zarr_codecs(codec: str, clevel: int, quality: int) -> dict[str, Any]:
    """``create_array`` keyword arguments (``compressors`` / ``serializer``) for a store codec (not ``auto``)."""
    if codec == "jpeg":
        return {"serializer": JpegTileCodec(quality=quality), "compressors": None}
    if codec == "blosc-lz4":
        return {"compressors": BloscCodec(cname="lz4", clevel=clevel, shuffle="shuffle")}
    if codec == "blosc-zstd":
        return {"compressors": BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")}
    raise ConfigError(f"no zarr codec for {codec!r}")
