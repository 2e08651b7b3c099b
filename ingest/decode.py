"""Decode one image file to RGB uint8 and fit it to the store size, or say in one line why it cannot be.

Runs inside worker processes, so everything here is a plain function of picklable arguments. The common case, an
8-bit RGB PNG (all of BreakHis), is decoded by libspng through imagecodecs (~1.5x faster than Pillow, the same
pixels); anything else, and any PNG libspng refuses, goes through Pillow, whose checks and messages are the reference.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from histo_bench.errors import HistoBenchError

#: Off-size images within this fraction of the store size are padded / cropped (no resampling); BreakHis has a few
#: 700x456 images among the 700x460 ones.
FIT_TOLERANCE = 0.02
#: With an explicit target size, images whose aspect ratio differs by more than this are refused, not distorted.
ASPECT_TOLERANCE = 0.10
#: Images whose header claims more pixels than this are refused before any pixel is decoded (a "decompression
#: bomb": a small file that would expand to gigabytes). BreakHis images are 0.3 megapixels.
MAX_PIXELS = 64_000_000


class DecodeError(HistoBenchError, ValueError):
    """A file that cannot become an RGB uint8 image of the store size; the message is the reason."""


@dataclass
class Decoded:
    """One decoded image plus what happened to it on the way."""

    image: np.ndarray
    orig_size: tuple[int, int]
    notes: list[str]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _plain_rgb_png(data: bytes) -> tuple[int, int] | None:
    """(width, height) when ``data`` starts like an 8-bit RGB PNG (colour type 2, no palette, no alpha); else None."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    if data[24] != 8 or data[25] != 2:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _fast_png(data: bytes) -> np.ndarray | None:
    """The pixels of a plain 8-bit RGB PNG via libspng (bomb-checked from the header first); None when ``data`` is
    not one or libspng cannot decode it (the caller then asks Pillow, for the reference error or result)."""
    size = _plain_rgb_png(data)
    if size is None:
        return None
    check_pixel_count(size)
    try:
        import imagecodecs

        arr = imagecodecs.spng_decode(data)
    except Exception:  # imagecodecs missing or built without spng, or a damaged file: Pillow decides
        return None
    if arr.dtype != np.uint8 or arr.shape != (size[1], size[0], 3):
        return None
    return arr


def _png_bit_depth(path: str) -> int | None:
    with open(path, "rb") as fh:
        head = fh.read(25)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 25:
        return head[24]
    return None


def _to_rgb(im: Image.Image, path: str, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
        if _png_bit_depth(path) == 16:
            notes.append("16-bit PNG reduced to 8 bits per channel")
        return arr
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        if rgba[..., 3].min() < 255:
            raise DecodeError(f"{mode} image with transparent pixels (expected opaque RGB)")
        notes.append(f"{mode} image converted to RGB (alpha fully opaque)")
        return np.ascontiguousarray(rgba[..., :3])
    if mode == "P":
        notes.append("palette image converted to RGB")
        return np.asarray(im.convert("RGB"))
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise DecodeError(f"16-bit/integer grayscale image (mode {mode}); expected 8-bit RGB")
    if mode in ("L", "1"):
        raise DecodeError(f"grayscale image (mode {mode}); expected RGB")
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
        return np.asarray(im.convert("RGB"))
    raise DecodeError(f"unsupported image mode {mode}; expected RGB")


def fit(image: np.ndarray, size: tuple[int, int], *, resize: bool) -> tuple[np.ndarray, str | None]:
    """Bring ``image`` to ``size`` = (height, width).

    Without ``resize`` (native-resolution stores) only near-equal sizes are accepted and padded (edge
    replication) or centre-cropped, keeping every pixel's scale. With ``resize`` the image is resampled when its
    aspect ratio is close enough. Returns the image and a note, or raises :class:`DecodeError`.
    """
    h, w = image.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return image, None
    if not resize:
        if abs(h - th) > FIT_TOLERANCE * th or abs(w - tw) > FIT_TOLERANCE * tw:
            raise DecodeError(f"unexpected image size {w}x{h} (the store holds {tw}x{th}); "
                              "pass --size to resize everything")
        out = image
        if h > th or w > tw:
            y0, x0 = max(h - th, 0) // 2, max(w - tw, 0) // 2
            out = out[y0:y0 + min(h, th), x0:x0 + min(w, tw)]
        ph, pw = th - out.shape[0], tw - out.shape[1]
        if ph or pw:
            out = np.pad(out, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")
        return np.ascontiguousarray(out), f"size {w}x{h} fitted to {tw}x{th} by padding/cropping"
    if abs((w / h) / (tw / th) - 1.0) > ASPECT_TOLERANCE:
        raise DecodeError(f"aspect ratio of {w}x{h} differs from the target {tw}x{th} by more than "
                          f"{ASPECT_TOLERANCE:.0%}; refusing to distort it")
    resample = Image.Resampling.BOX if (h > th and w > tw) else Image.Resampling.BILINEAR
    out = np.asarray(Image.fromarray(image).resize((tw, th), resample=resample))
    return out, None


def check_pixel_count(size: tuple[int, int], limit: int = MAX_PIXELS) -> None:
    """Raise :class:`DecodeError` when an image of ``size`` = (width, height) would be over ``limit`` pixels."""
    w, h = size
    if w * h > limit:
        raise DecodeError(f"image header claims {w}x{h} px ({w * h / 1e6:,.0f} megapixels, over the "
                          f"{limit / 1e6:,.0f} megapixel limit): refused as a possible decompression bomb")


def decode_file(path: str, size: tuple[int, int], resize: bool) -> Decoded:
    """Read ``path`` as an RGB uint8 image of ``size`` (height, width); raise :class:`DecodeError` with the reason."""
    try:
        n_bytes = os.path.getsize(path)
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror}") from exc
    if n_bytes == 0:
        raise DecodeError("empty file (0 bytes)")
    notes: list[str] = []
    try:
        with open(path, "rb") as fh:
            data = fh.read(33)
            if _plain_rgb_png(data) is not None:  # only then is the whole file read at once
                data += fh.read()
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror}") from exc
    arr = _fast_png(data)
    if arr is None:
        arr = _decode_with_pillow(io.BytesIO(data) if len(data) == n_bytes else path, path, notes)
    orig = (int(arr.shape[0]), int(arr.shape[1]))
    arr, note = fit(arr, size, resize=resize)
    if note:
        notes.append(note)
    return Decoded(np.ascontiguousarray(arr, dtype=np.uint8), orig, notes)


def _decode_with_pillow(source, path: str, notes: list[str]) -> np.ndarray:
    """Decode with Pillow, checking the mode (see :func:`_to_rgb`); raises :class:`DecodeError` with the reason."""
    try:
        with Image.open(source) as im:
            check_pixel_count(im.size)
            im.load()
            return _to_rgb(im, path, notes)
    except UnidentifiedImageError as exc:
        raise DecodeError("not an image file (no known image format)") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own, stricter-than-ours check fired first
        raise DecodeError(f"decompression bomb: {exc}") from exc
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports truncation/corruption as these
        raise DecodeError(f"corrupt or truncated image: {exc}") from exc


def read_size(path: str) -> tuple[int, int] | None:
    """(height, width) from the image header without decoding pixels; None when unreadable."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(33)
        size = _plain_rgb_png(head)  # the common case, without Pillow's per-file set-up
        if size is not None:
            check_pixel_count(size)
            return size[1], size[0]
        with Image.open(path) as im:
            check_pixel_count(im.size)
            return int(im.size[1]), int(im.size[0])
    except Exception:
        return None
