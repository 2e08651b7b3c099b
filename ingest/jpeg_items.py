"""JPEG tiles as bytes: the encoder and decoder behind the slide store's ``jpeg`` codec, without zarr.

:mod:`ingest.tile_codecs` wraps these in the zarr codec; :mod:`ingest.shards` uses them directly, so that a worker
process reading or writing items (e.g. the BreakHis ingest's) never imports zarr.
"""

from __future__ import annotations

import numpy as np

from histo_bench.errors import ConfigError

#: The zarr codec name of JPEG tiles.
JPEG_CODEC = "histo_bench.jpeg"


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - imagecodecs is a core dependency
        raise ConfigError("JPEG tiles need imagecodecs: pip install imagecodecs") from exc
    return imagecodecs


def jpeg_encode(tile: np.ndarray, quality: int) -> bytes:
    """One (T, T, 3) uint8 tile as a baseline JPEG (4:2:0 YCbCr; releases the GIL)."""
    return bytes(_imagecodecs().jpeg8_encode(np.ascontiguousarray(tile), level=quality))


def jpeg_decode(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A JPEG tile as RGB uint8 of ``shape`` (raises ValueError when the bytes are not such a JPEG)."""
    try:
        out = _imagecodecs().jpeg8_decode(blob)
    except Exception as exc:  # imagecodecs raises its own Jpeg8Error
        raise ValueError(f"not a decodable JPEG ({exc})") from exc
    if out.size != int(np.prod(shape)):
        raise ValueError(f"JPEG of shape {out.shape}, expected {tuple(shape)}")
    return out.reshape(shape)


class JpegItemCodec:
    """The item encoder :class:`~ingest.shards.ShardWriter` uses for a JPEG array (same bytes as zarr's)."""

    def __init__(self, quality: int) -> None:
        self.quality = quality

    def encode(self, item: np.ndarray) -> bytes:
        return jpeg_encode(item.reshape(-1, item.shape[-2], 3), self.quality)
