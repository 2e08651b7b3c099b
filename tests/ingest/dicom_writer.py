"""A DICOM whole-slide image written by hand, for tests: no pydicom / wsidicom, only numpy and Pillow.

:func:`write_dicom_wsi` writes an RGB array as a VL Whole Slide Microscopy Image (SOP class
1.2.840.10008.5.1.4.1.1.77.1.6) in the form OpenSlide 4 reads (through libdicom):

* a folder of DICOM Part-10 files, one instance per pyramid level: level 0 is the array, each next level half the
  one before (Pillow's box filter, odd sides rounded up) until a level fits in one tile. Each file is a 128-byte
  preamble, ``DICM``, the group-2 file meta (always explicit VR little endian, led by its group length), then the
  data set in explicit VR little endian;
* ``TILED_FULL`` frames: the level's tiles in row-major order, every one ``tile x tile`` (edge tiles are padded by
  repeating the last row / column; OpenSlide clips them to the level's size and refuses a frame of any other
  size), each a baseline JPEG (transfer syntax 1.2.840.10008.1.2.4.50) in encapsulated Pixel Data behind a Basic
  Offset Table (libdicom follows it when it is there: a wrong offset fails the read);
* one Study, Series and Frame of Reference UID across the instances: OpenSlide opens the instance it is given and
  takes every other file of the folder with the same Series Instance UID as another level (levels are told apart
  by their total pixel matrix size, and sorted by width);
* ImageType ``ORIGINAL\\PRIMARY\\VOLUME\\NONE`` for level 0, ``DERIVED\\PRIMARY\\VOLUME\\RESAMPLED`` for the others,
  as the standard has them. OpenSlide's current source matches all four values against a fixed list of level
  types; the OpenSlide 4.0.1 installed here looks at the third only (``VOLUME``: a level; ``LABEL``, ``OVERVIEW``,
  ``THUMBNAIL``: an associated image; anything else: the instance is silently ignored);
* pixel spacing in mm (row, column) in the Shared Functional Groups' Pixel Measures, which OpenSlide reports as
  ``openslide.mpp-y`` / ``openslide.mpp-x`` in µm; an optional Objective Lens Power in the Optical Path Sequence
  becomes ``openslide.objective-power``.

Pillow's JPEGs are YCbCr with subsampled chroma, so the Photometric Interpretation is ``YBR_FULL_422`` (OpenSlide
takes ``RGB`` for JPEG too, but then decodes the components as RGB, without the YCbCr conversion). OpenSlide also
checks Samples per Pixel 3, Planar Configuration 0, Bits Allocated / Stored 8, High Bit 7, Pixel Representation 0
and (when present) Total Pixel Matrix Focal Planes 1.

The element encoder is general: :func:`encode_element` follows the explicit VR rules (2-byte lengths, except a
reserved 2 bytes and a 4-byte length for OB, OD, OF, OL, OV, OW, SQ, SV, UC, UN, UR, UT and UV; values padded to
an even length with a space, or a NUL for UI and binary VRs), and sequences are written with defined lengths or,
with ``undefined_lengths=True``, with undefined lengths closed by item and sequence delimiters.
"""

from __future__ import annotations

import io
import struct
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: One data element: (tag as 0xGGGGEEEE, VR, value). A value is a str or number (or a sequence of them: a
#: multi-valued element), bytes for OB / OW / UN..., a tag (int) for AT, a list of items (lists of elements) for SQ.
Element = tuple[int, str, Any]

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
LEVEL0_TYPE = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")
RESAMPLED_TYPE = ("DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010

_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}


def uid_for(name: str) -> str:
    """A stable UID for ``name`` under the UUID-derived root ``2.25`` (no registered root needed)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def new_uid() -> str:
    """A fresh, globally unique UID (``2.25.`` + a random UUID as an integer)."""
    return f"2.25.{uuid.uuid4().int}"


IMPLEMENTATION_CLASS_UID = uid_for("histo-bench/tests/ingest/dicom_writer")


# --- element encoding (explicit VR little endian) ---------------------------------------------------------------

def _tag(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_LENGTH_VRS:
        return _tag(tag) + vr.encode("ascii") + b"\0\0" + struct.pack("<I", length)
    if length > 0xFFFF:
        raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr}: {length} bytes do not fit a 2-byte length")
    return _tag(tag) + vr.encode("ascii") + struct.pack("<H", length)


def _delimiter(tag: int, length: int = 0) -> bytes:
    """An item or delimitation tag (group FFFE): tag and a 4-byte length, no VR."""
    return _tag(tag) + struct.pack("<I", length)


def _values(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def encode_value(vr: str, value: Any) -> bytes:
    """The bytes of a (non-sequence) value, padded to an even length."""
    if vr in _NUMBER_FORMATS:
        values = _values(value)
        return struct.pack(f"<{len(values)}{_NUMBER_FORMATS[vr]}", *values)
    if vr == "AT":
        return b"".join(_tag(int(t)) for t in _values(value))
    if vr in _BINARY_VRS:
        raw = bytes(value)
        return raw + b"\0" * (len(raw) % 2)
    raw = "\\".join(str(v) for v in _values(value)).encode("ascii")
    return raw + (b"\0" if vr == "UI" else b" ") * (len(raw) % 2)


def encode_element(tag: int, vr: str, value: Any, *, undefined_lengths: bool = False) -> bytes:
    """One data element: header (tag, VR, length) and value; a sequence's items are data sets in turn."""
    if vr == "SQ":
        return _encode_sequence(tag, value, undefined_lengths)
    body = encode_value(vr, value)
    return _header(tag, vr, len(body)) + body


def _encode_sequence(tag: int, items: Sequence[Sequence[Element]], undefined_lengths: bool) -> bytes:
    parts = []
    for item in items:
        body = encode_dataset(item, undefined_lengths=undefined_lengths)
        if undefined_lengths:
            parts.append(_delimiter(ITEM, UNDEFINED_LENGTH) + body + _delimiter(ITEM_END))
        else:
            parts.append(_delimiter(ITEM, len(body)) + body)
    body = b"".join(parts)
    if undefined_lengths:
        return _header(tag, "SQ", UNDEFINED_LENGTH) + body + _delimiter(SEQUENCE_END)
    return _header(tag, "SQ", len(body)) + body


def encode_dataset(elements: Sequence[Element], *, undefined_lengths: bool = False) -> bytes:
    """The elements in ascending tag order, as DICOM requires; a tag given twice is an error."""
    tags = [tag for tag, _, _ in elements]
    if len(set(tags)) != len(tags):
        raise ValueError("a data set holds each tag once")
    return b"".join(encode_element(tag, vr, value, undefined_lengths=undefined_lengths)
                    for tag, vr, value in sorted(elements, key=lambda e: e[0]))


def encapsulated_pixel_data(frames: Sequence[bytes]) -> bytes:
    """(7FE0,0010) OB of undefined length: a Basic Offset Table item (each frame item's offset from the first
    frame item), one item per compressed frame (padded to an even length), then a sequence delimiter."""
    padded = [f + b"\0" * (len(f) % 2) for f in frames]
    offsets = np.cumsum([0] + [8 + len(f) for f in padded[:-1]]).tolist() if padded else []
    table = struct.pack(f"<{len(offsets)}I", *offsets)
    items = [_delimiter(ITEM, len(table)) + table] + [_delimiter(ITEM, len(f)) + f for f in padded]
    return _header(PIXEL_DATA, "OB", UNDEFINED_LENGTH) + b"".join(items) + _delimiter(SEQUENCE_END)


def file_meta(sop_instance_uid: str, transfer_syntax: str = JPEG_BASELINE) -> bytes:
    """Group 2, explicit VR little endian, led by (0002,0000) File Meta Information Group Length: the byte count
    of the group's elements after it."""
    body = encode_dataset([
        (0x00020001, "OB", b"\0\1"),  # File Meta Information Version
        (0x00020002, "UI", WSI_SOP_CLASS),  # Media Storage SOP Class UID
        (0x00020003, "UI", sop_instance_uid),  # Media Storage SOP Instance UID
        (0x00020010, "UI", transfer_syntax),
        (0x00020012, "UI", IMPLEMENTATION_CLASS_UID),
        (0x00020013, "SH", "HISTOBENCH_TEST"),  # Implementation Version Name
    ])
    return encode_element(0x00020000, "UL", len(body)) + body


def part10(meta: bytes, dataset: bytes) -> bytes:
    """A DICOM Part-10 file: 128-byte preamble (zeros), the ``DICM`` prefix, file meta, data set."""
    return b"\0" * 128 + b"DICM" + meta + dataset


# --- the slide --------------------------------------------------------------------------------------------------

def pyramid(rgb: np.ndarray, tile: int) -> list[np.ndarray]:
    """Level 0 is ``rgb``; each next level is the previous one halved (box filter, odd sides rounded up), until a
    level fits in one ``tile x tile`` tile."""
    levels = [rgb]
    while levels[-1].shape[0] > tile or levels[-1].shape[1] > tile:
        h, w = levels[-1].shape[:2]
        half = Image.fromarray(levels[-1]).resize(((w + 1) // 2, (h + 1) // 2), Image.Resampling.BOX)
        levels.append(np.asarray(half))
    return levels


def tiles(level: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The ``tile x tile`` tiles of ``level`` in row-major order (TILED_FULL frame order); partial edge tiles are
    padded to full size by repeating the level's last row / column."""
    h, w = level.shape[:2]
    padded = np.pad(level, ((0, -h % tile), (0, -w % tile), (0, 0)), mode="edge")
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            yield padded[y:y + tile, x:x + tile]


def encode_jpeg(tile: np.ndarray, quality: int) -> bytes:
    """A baseline JPEG of an RGB tile, as Pillow writes it (YCbCr, chroma subsampled)."""
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _code(value: str, scheme: str, meaning: str) -> list[Element]:
    """A code sequence item: Code Value, Coding Scheme Designator, Code Meaning."""
    return [(0x00080100, "SH", value), (0x00080102, "SH", scheme), (0x00080104, "LO", meaning)]


def instance_elements(*, uids: dict[str, str], number: int, image_type: Sequence[str], size: tuple[int, int],
                      tile: int, frames: int, mpp: float, volume_mm: tuple[float, float],
                      objective_power: float | None = None) -> list[Element]:
    """Every element of one level's data set but Pixel Data. ``uids``: study, series, frame_of_reference,
    dimension_organization, sop_instance; ``size``: the level's (width, height); ``mpp``: the level's µm/px."""
    width, height = size
    spacing = f"{mpp / 1000:.10g}"  # Pixel Spacing is in mm: row spacing, column spacing
    optical_path: list[Element] = [
        (0x00220016, "SQ", [_code("111744", "DCM", "Brightfield illumination")]),  # Illumination Type Code Seq.
        (0x00480106, "SH", "1"),  # Optical Path Identifier
    ]
    if objective_power is not None:
        optical_path.append((0x00480112, "DS", f"{objective_power:g}"))  # Objective Lens Power
    dim_uid = uids["dimension_organization"]
    return [
        (0x00080008, "CS", list(image_type)),
        (0x00080016, "UI", WSI_SOP_CLASS),
        (0x00080018, "UI", uids["sop_instance"]),
        (0x00080060, "CS", "SM"),  # Modality: slide microscopy
        (0x00089206, "CS", "VOLUME"),  # Volumetric Properties
        (0x0020000D, "UI", uids["study"]),
        (0x0020000E, "UI", uids["series"]),
        (0x00200013, "IS", number),  # Instance Number
        (0x00200052, "UI", uids["frame_of_reference"]),
        (0x00209221, "SQ", [[(0x00209164, "UI", dim_uid)]]),  # Dimension Organization Sequence
        (0x00209222, "SQ", [  # Dimension Index Sequence: frames indexed by row then column position
            [(0x00209164, "UI", dim_uid), (0x00209165, "AT", 0x0048021F), (0x00209167, "AT", 0x0048021A)],
            [(0x00209164, "UI", dim_uid), (0x00209165, "AT", 0x0048021E), (0x00209167, "AT", 0x0048021A)],
        ]),
        (0x00209311, "CS", "TILED_FULL"),  # Dimension Organization Type
        (0x00280002, "US", 3),  # Samples per Pixel
        (0x00280004, "CS", "YBR_FULL_422"),  # Photometric Interpretation (of the JPEG frames)
        (0x00280006, "US", 0),  # Planar Configuration
        (0x00280008, "IS", frames),  # Number of Frames
        (0x00280010, "US", tile),  # Rows (of a frame)
        (0x00280011, "US", tile),  # Columns
        (0x00280100, "US", 8),  # Bits Allocated
        (0x00280101, "US", 8),  # Bits Stored
        (0x00280102, "US", 7),  # High Bit
        (0x00280103, "US", 0),  # Pixel Representation: unsigned
        (0x00282110, "CS", "01"),  # Lossy Image Compression: yes
        (0x00282114, "CS", "ISO_10918_1"),  # Lossy Image Compression Method: JPEG
        (0x00400512, "LO", "SLIDE_1"),  # Container Identifier
        (0x00400518, "SQ", [_code("433466003", "SCT", "Microscope slide")]),  # Container Type Code Sequence
        (0x00400560, "SQ", []),  # Specimen Description Sequence (type 2: present, may be empty)
        (0x00480001, "FL", volume_mm[0]),  # Imaged Volume Width (mm)
        (0x00480002, "FL", volume_mm[1]),  # Imaged Volume Height (mm)
        (0x00480003, "FL", 0.0),  # Imaged Volume Depth (mm)
        (0x00480006, "UL", width),  # Total Pixel Matrix Columns
        (0x00480007, "UL", height),  # Total Pixel Matrix Rows
        (0x00480008, "SQ", [[(0x0040072A, "DS", "0"), (0x0040073A, "DS", "0")]]),  # Total Pixel Matrix Origin
        (0x00480010, "CS", "NO"),  # Specimen Label in Image
        (0x00480011, "CS", "AUTO"),  # Focus Method
        (0x00480012, "CS", "NO"),  # Extended Depth of Field
        (0x00480105, "SQ", [optical_path]),  # Optical Path Sequence
        (0x00480302, "UL", 1),  # Number of Optical Paths
        (0x00480303, "UL", 1),  # Total Pixel Matrix Focal Planes
        (0x52009229, "SQ", [[  # Shared Functional Groups Sequence
            (0x00289110, "SQ", [[(0x00180050, "DS", "0"), (0x00280030, "DS", [spacing, spacing])]]),  # Measures
            (0x00400710, "SQ", [[(0x00089007, "CS", list(image_type))]]),  # WSM Image Frame Type (Frame Type)
        ]]),
    ]


def write_dicom_wsi(rgb: np.ndarray, folder: str | Path, *, tile: int = 256, mpp: float = 0.5, quality: int = 90,
                    objective_power: float | None = None, undefined_lengths: bool = False) -> list[Path]:
    """Write ``rgb`` (H, W, 3 uint8) as a DICOM WSI pyramid in ``folder`` (created): ``level-<i>.dcm`` per level,
    level 0 first; returns their paths in level order. ``mpp`` is level 0's µm per pixel; ``objective_power``
    (optional) is written as the Objective Lens Power; ``undefined_lengths`` writes sequences and items with
    undefined lengths and delimiters instead of byte counts (both are valid DICOM)."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if not 16 <= tile <= 0xFFFF or not mpp > 0:
        raise ValueError(f"tile {tile} must be in 16..65535 and mpp {mpp} > 0")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    height0, width0 = rgb.shape[:2]
    volume_mm = (width0 * mpp / 1000, height0 * mpp / 1000)
    shared = {"study": new_uid(), "series": new_uid(), "frame_of_reference": new_uid(),
              "dimension_organization": new_uid()}
    paths = []
    for i, level in enumerate(pyramid(rgb, tile)):
        height, width = level.shape[:2]
        frames = [encode_jpeg(t, quality) for t in tiles(level, tile)]
        uids = {**shared, "sop_instance": new_uid()}
        elements = instance_elements(
            uids=uids, number=i + 1, image_type=LEVEL0_TYPE if i == 0 else RESAMPLED_TYPE, size=(width, height),
            tile=tile, frames=len(frames), mpp=mpp * width0 / width, volume_mm=volume_mm,
            objective_power=objective_power)
        dataset = encode_dataset(elements, undefined_lengths=undefined_lengths) + encapsulated_pixel_data(frames)
        path = folder / f"level-{i}.dcm"
        path.write_bytes(part10(file_meta(uids["sop_instance"]), dataset))
        paths.append(path)
    return paths
