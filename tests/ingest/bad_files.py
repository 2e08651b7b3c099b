"""Writers of broken and odd image files, for the bad-input tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def rgb(h: int = 46, w: int = 70, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_truncated_png(path: Path, h: int = 46, w: int = 70) -> None:
    Image.fromarray(rgb(h, w)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_corrupt_png(path: Path) -> None:
    Image.fromarray(rgb()).save(path)
    data = bytearray(path.read_bytes())
    data[60:200] = b"\x00" * 140  # clobber the compressed stream
    path.write_bytes(bytes(data))


def write_png16_rgb(path: Path, h: int = 46, w: int = 70) -> np.ndarray:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one, so the chunks are built by hand)."""
    arr = np.random.default_rng(1).integers(0, 65536, (h, w, 3), dtype=np.uint16)
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return arr


def write_bomb_png(path: Path, w: int = 60000, h: int = 60000) -> None:
    """A few-hundred-byte PNG whose header claims ``w`` x ``h`` RGB pixels (10.8 GB decoded at the default size):
    a decompression bomb."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * (3 * w)
    idat = zlib.compress(row * 4, 9)  # a few rows; the header promises the rest
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
