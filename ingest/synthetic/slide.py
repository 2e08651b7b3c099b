"""A deterministic synthetic pyramidal whole-slide image (tiled JPEG TIFF) for tests, demos and benchmarks.

:func:`write_synthetic_slide` writes irregular tissue islands on a white glass background. The islands are the
super-level set of a smooth random field defined on *level-0 coordinates* (a few anisotropic Gaussian blobs
plus two octaves of cubic B-spline noise), so every pyramid level and :func:`synthetic_tissue_mask` (the ground
truth for tissue detection) agree. Inside the islands the texture is a mosaic of synthetic H&E fields rendered
by :func:`ingest.synthetic.breakhis_tree.render_image` (a handful of cached fields, flipped per mosaic cell).

File convention (read identically by the cuCIM, OpenSlide and tifffile readers):

* one TIFF page per pyramid level, level 0 first, each tiled (``tile`` x ``tile``), JPEG-compressed RGB with
  ``Photometric = YCbCr`` (2x2 chroma subsampling) -- the layout of most Aperio SVS files;
* every page carries an Aperio-style ``ImageDescription``
  ``"Aperio Image Library vSynthetic\\r\\n<W>x<H> [0,0 <W>x<H>] (<tile>x<tile>) JPEG/RGB Q=<q>|AppMag = 40|MPP = 0.25"``
  (OpenSlide selects its *aperio* driver and reports ``openslide.mpp-x`` / ``openslide.objective-power``;
  cuCIM parses it as Aperio SVS), plus ``XResolution``/``YResolution`` in pixels per centimetre so generic
  TIFF tools see the pixel size too;
* level ``d`` has size ``ceil(W / d) x ceil(H / d)``; its pixel ``(X, Y)`` covers level-0 ``[X d, (X+1) d)``.

Writing is streamed: tiles are produced strip by strip (``tile`` rows of one level at a time), so memory is
bounded by a few strips whatever the slide size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile

from ingest.synthetic.breakhis_tree import render_image

log = logging.getLogger(__name__)

#: Target fraction of the slide covered by tissue for ``tissue="islands"``.
TISSUE_FRACTION = 0.4
_FIELD_W, _FIELD_H = 700, 460  # size of one rendered H&E field (BreakHis)
_N_FIELDS = 6
_FIELD_CLASSES = ("ductal_carcinoma", "fibroadenoma", "lobular_carcinoma", "adenosis", "papillary_carcinoma",
                  "tubular_adenoma")
_EDGE = 0.04  # width of the soft tissue border, in field units
_NOISE_TILE = 256
_TISSUE_KINDS = ("islands", "none")


def _bspline_weights(t: np.ndarray, n_ctrl: int) -> np.ndarray:
    """Dense (len(t), n_ctrl) cubic B-spline interpolation weights at grid coordinates ``t`` (>= 1)."""
    i = np.floor(t).astype(np.int64)
    f = t - i
    w = np.stack([(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
                  f**3 / 6], axis=1)
    out = np.zeros((len(t), n_ctrl), dtype=np.float64)
    rows = np.arange(len(t))
    for k in range(4):
        np.add.at(out, (rows, np.clip(i - 1 + k, 0, n_ctrl - 1)), w[:, k])
    return out


class _TissueField:
    """The smooth random field whose super-level set is the tissue, as a function of level-0 coordinates."""

    def __init__(self, width: int, height: int, seed: int, kind: str = "islands") -> None:
        if kind not in _TISSUE_KINDS:
            raise ValueError(f"unknown tissue kind {kind!r} (known: {', '.join(_TISSUE_KINDS)})")
        self.width, self.height, self.kind = width, height, kind
        self.scale = float(max(width, height))  # coordinates are normalised by the longer side
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x51DE]))
        n_blobs = int(rng.integers(3, 6))
        ext_u, ext_v = width / self.scale, height / self.scale
        self.blobs = [(rng.uniform(0.2, 0.8) * ext_u, rng.uniform(0.2, 0.8) * ext_v,
                       rng.uniform(0.10, 0.22), rng.uniform(0.08, 0.18)) for _ in range(n_blobs)]
        self.octaves = []
        for spacing, amp in ((0.12, 0.45), (0.04, 0.18)):
            gx, gy = math.ceil(ext_u / spacing) + 4, math.ceil(ext_v / spacing) + 4
            self.octaves.append((spacing, amp, rng.standard_normal((gy, gx))))
        # threshold fixed from a coarse evaluation, independent of the level later evaluated
        n = 256
        cw, ch = max(1, round(n * width / self.scale)), max(1, round(n * height / self.scale))
        coarse = self.evaluate((np.arange(cw) + 0.5) * width / cw, (np.arange(ch) + 0.5) * height / ch)
        self.threshold = float(np.quantile(coarse, 1 - TISSUE_FRACTION)) if kind == "islands" else np.inf

    def columns(self, xs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The column factors of the field at level-0 ``xs`` (reusable for every row strip of a level)."""
        u = np.asarray(xs, np.float64) / self.scale
        blobs = [np.exp(-((u - cx) / rx) ** 2).astype(np.float32) for cx, _, rx, _ in self.blobs]
        wxs = [(amp * (grid @ _bspline_weights(u / spacing + 1.5, grid.shape[1]).T)).astype(np.float32)
               for spacing, amp, grid in self.octaves]
        return blobs, wxs

    def evaluate(self, xs: np.ndarray, ys: np.ndarray, cols=None) -> np.ndarray:
        """Field values (len(ys), len(xs)) float32 at level-0 coordinates ``xs`` (columns) x ``ys`` (rows)."""
        blobs, wxs = cols if cols is not None else self.columns(xs)
        v = np.asarray(ys, np.float64) / self.scale
        out = np.zeros((len(v), len(blobs[0])), dtype=np.float32)
        for (_, cy, _, ry), bx in zip(self.blobs, blobs, strict=True):
            np.maximum(out, np.outer(np.exp(-((v - cy) / ry) ** 2).astype(np.float32), bx), out=out)
        for (spacing, _, grid), wx in zip(self.octaves, wxs, strict=True):
            out += _bspline_weights(v / spacing + 1.5, grid.shape[0]).astype(np.float32) @ wx
        return out

    def alpha(self, xs: np.ndarray, ys: np.ndarray, cols=None) -> np.ndarray:
        """Tissue opacity in [0, 1] (soft border of width ``_EDGE`` centred on the mask boundary)."""
        return np.clip((self.evaluate(xs, ys, cols) - self.threshold) / _EDGE + 0.5, 0.0, 1.0)


def _level_centres(start: int, count: int, downsample: int, limit: int) -> np.ndarray:
    """Level-0 coordinates of the centres of ``count`` level pixels from ``start`` (clipped to the slide)."""
    return np.minimum((np.arange(start, start + count) + 0.5) * downsample, limit - 0.5)


def synthetic_tissue_mask(width: int, height: int, downsample: float = 1.0, seed: int = 0, *,
                          tissue: str = "islands") -> np.ndarray:
    """Ground-truth tissue mask of ``write_synthetic_slide(width=, height=, seed=, tissue=)``.

    Returns a bool array of shape ``(ceil(height / downsample), ceil(width / downsample))``; a pixel is tissue
    when the field at its centre (level-0 coordinates) is above the threshold, i.e. tissue opacity >= 0.5.
    """
    if downsample <= 0:
        raise ValueError(f"downsample must be > 0, got {downsample}")
    field = _TissueField(width, height, seed, tissue)
    mw, mh = math.ceil(width / downsample), math.ceil(height / downsample)
    xs = np.minimum((np.arange(mw) + 0.5) * downsample, width - 0.5)
    ys = np.minimum((np.arange(mh) + 0.5) * downsample, height - 0.5)
    return field.evaluate(xs, ys) >= field.threshold


@lru_cache(maxsize=4)
def _fields(seed: int, cell_w: int, cell_h: int, classes: tuple[str, ...] = _FIELD_CLASSES
            ) -> tuple[np.ndarray, ...]:
    """The cached H&E fields (cropped to one mosaic cell), and their flips: (2 * _N_FIELDS, cell_h, cell_w, 3)."""

    out = []
    for k in range(_N_FIELDS):
        img = render_image(classes[k % len(classes)], "40X", f"14-{90001 + k}", k, seed=seed,
                           height=_FIELD_H, width=_FIELD_W)[:cell_h, :cell_w]
        out += [img, img[::-1, ::-1]]
    return tuple(np.ascontiguousarray(f) for f in out)


@lru_cache(maxsize=16)
def _fields_at(seed: int, cell_w: int, cell_h: int, downsample: int,
               classes: tuple[str, ...] = _FIELD_CLASSES) -> np.ndarray:
    """The mosaic fields box-downsampled by the integer ``downsample``: (n, cell_h/d, cell_w/d, 3) uint8."""
    fields = np.stack(_fields(seed, cell_w, cell_h, classes)).astype(np.float32)
    d = downsample
    n, h, w, _ = fields.shape
    small = fields.reshape(n, h // d, d, w // d, d, 3).mean(axis=(2, 4))
    return np.rint(small).astype(np.uint8)


class _LevelRenderer:
    """Renders rows of one pyramid level directly at its resolution (no level is ever held whole)."""

    def __init__(self, field: _TissueField, downsample: int, seed: int, cell: tuple[int, int],
                 classes: tuple[str, ...] = _FIELD_CLASSES) -> None:
        self.field, self.d = field, downsample
        self.width = math.ceil(field.width / downsample)
        self.height = math.ceil(field.height / downsample)
        cw, ch = cell
        self.fields = _fields_at(seed, cw, ch, downsample, tuple(classes))
        self.cw, self.ch = cw // downsample, ch // downsample
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCE11]))
        n_cx, n_cy = math.ceil(field.width / cw) + 1, math.ceil(field.height / ch) + 1
        self.cell_choice = rng.integers(0, len(self.fields), (n_cy, n_cx))
        noise = rng.integers(-3, 4, (_NOISE_TILE, _NOISE_TILE, 1))
        self._cols = None
        self.glass_tile = (np.array([243, 243, 246]) + noise).astype(np.uint8)

    def rows(self, y0: int, nrows: int) -> np.ndarray:
        """RGB uint8 (nrows, width, 3) of level rows ``y0 .. y0 + nrows`` (clipped at the bottom)."""
        nrows = min(nrows, self.height - y0)
        w, d = self.width, self.d
        ys = np.arange(y0, y0 + nrows)
        # glass: slightly off-white with a fixed fine noise pattern
        out = np.tile(self.glass_tile[ys % _NOISE_TILE], (1, -(-w // _NOISE_TILE), 1))[:, :w]
        if self.field.kind == "none":
            return np.ascontiguousarray(out)
        if self._cols is None:
            self._cols = self.field.columns(_level_centres(0, w, d, self.field.width))
        alpha = self.field.alpha(None, _level_centres(y0, nrows, d, self.field.height), self._cols)
        if not alpha.any():
            return np.ascontiguousarray(out)
        # H&E mosaic: mosaic cell (i, j) shows field cell_choice[i, j]
        tissue = np.empty_like(out)
        y = y0
        while y < y0 + nrows:
            ci, oy = divmod(y, self.ch)
            y1 = min(y0 + nrows, (ci + 1) * self.ch)
            for cj, x in enumerate(range(0, w, self.cw)):
                x1 = min(w, x + self.cw)
                tissue[y - y0:y1 - y0, x:x1] = self.fields[self.cell_choice[ci, cj], oy:oy + y1 - y, :x1 - x]
            y = y1
        a = np.rint(alpha * 256).astype(np.uint16)[..., None]  # integer blend: no float strip copies
        out = ((tissue * a + out * (256 - a) + 128) >> 8).astype(np.uint8)
        return np.ascontiguousarray(out)


def _tiles(renderer: _LevelRenderer, tile: int) -> Iterator[np.ndarray]:
    """Tiles of one level in TIFF order (row-major), each (tile, tile, 3), zero-padded at the edges."""
    for y0 in range(0, renderer.height, tile):
        strip = renderer.rows(y0, tile)
        if strip.shape[0] < tile:
            strip = np.pad(strip, ((0, tile - strip.shape[0]), (0, 0), (0, 0)), constant_values=255)
        for x0 in range(0, renderer.width, tile):
            t = strip[:, x0:x0 + tile]
            if t.shape[1] < tile:
                t = np.pad(t, ((0, 0), (0, tile - t.shape[1]), (0, 0)), constant_values=255)
            yield np.ascontiguousarray(t)


#: The scanner string every page of a synthetic slide carries (how a slide is recognised as synthetic).
SYNTHETIC_SCANNER = "Aperio Image Library vSynthetic"


def is_synthetic_slide(path: str | Path) -> bool | None:
    """True for a slide written by :func:`write_synthetic_slide`, False for another readable TIFF, None when the
    file is missing or not a TIFF (unknown)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".tif", ".tiff", ".svs"):
        return None

    try:
        with tifffile.TiffFile(path) as tif:
            return (tif.pages[0].description or "").startswith(SYNTHETIC_SCANNER)
    except (OSError, ValueError, tifffile.TiffFileError):
        return None


def aperio_description(width: int, height: int, tile: int, quality: int, mpp: float | None,
                       objective_power: float | None, level_size: tuple[int, int] | None = None) -> str:
    """The Aperio-style ImageDescription written on every page (``level_size`` for reduced levels)."""
    head = f"{SYNTHETIC_SCANNER}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    if level_size is not None:
        head += f" -> {level_size[0]}x{level_size[1]}"
    parts = [f"{head} JPEG/RGB Q={quality}"]
    if objective_power is not None:
        parts.append(f"AppMag = {objective_power:g}")
    if mpp is not None:
        parts.append(f"MPP = {mpp:g}")
    return "|".join(parts)


def write_synthetic_slide(path: str | Path, *, width: int = 8192, height: int = 8192, mpp: float = 0.25,
                          objective_power: float = 40, levels: Sequence[int] = (1, 4, 16), tile: int = 256,
                          quality: int = 90, seed: int = 0, tissue: str = "islands",
                          max_workers: int | None = None, classes: Sequence[str] = _FIELD_CLASSES) -> Path:
    """Write a synthetic pyramidal slide to ``path`` (atomically: a temp name, then rename) and return it.

    Args:
        width, height: level-0 size in pixels.
        mpp: microns per level-0 pixel; objective_power: the scan magnification (Aperio ``AppMag``).
        levels: integer downsample factors, strictly increasing, the first 1.
        tile: tile side (multiple of 16); quality: JPEG quality 1..100.
        seed: every pixel is a function of the arguments; tissue: ``"islands"`` or ``"none"`` (blank glass).
        max_workers: threads for JPEG encoding (tifffile default when None).
        classes: BreakHis classes whose synthetic H&E fields fill the tissue (e.g. only malignant ones, to make
            slides with a slide-level label for MIL).
    """

    levels = [int(d) for d in levels]
    if not levels or levels[0] != 1 or any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        raise ValueError(f"levels must be strictly increasing integer downsamples starting at 1, got {levels}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1, got {width}x{height}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    lcm = math.lcm(*levels)
    if lcm > _FIELD_H:
        raise ValueError(f"the downsamples' least common multiple ({lcm}) must be <= {_FIELD_H}")
    cell = ((_FIELD_W // lcm) * lcm, (_FIELD_H // lcm) * lcm)
    field = _TissueField(width, height, seed, tissue)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    bigtiff = width * height * 3 * 1.4 > 2**31 - 2**26
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for i, d in enumerate(levels):
            r = _LevelRenderer(field, d, seed, cell, tuple(classes))
            size = None if i == 0 else (r.width, r.height)
            desc = aperio_description(width, height, tile, quality, mpp, objective_power, size)
            ppcm = 1e4 / (mpp * width / r.width) if mpp else None
            tw.write(_tiles(r, tile), shape=(r.height, r.width, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                     description=desc, metadata=None, subfiletype=0 if i == 0 else 1,
                     resolution=(ppcm, ppcm) if ppcm else None, resolutionunit="CENTIMETER" if ppcm else None,
                     maxworkers=max_workers)
            log.debug("%s: wrote level %d (%dx%d)", path, i, r.width, r.height)
    tmp.replace(path)
    return path


def render_level_region(x: int, y: int, w: int, h: int, *, width: int, height: int, downsample: int = 1,
                        levels: Sequence[int] = (1, 4, 16), seed: int = 0, tissue: str = "islands") -> np.ndarray:
    """The pre-JPEG pixels of a region of the slide ``write_synthetic_slide`` writes with the same arguments.

    ``(x, y, w, h)`` are in pixels *of the level* with ``downsample``; the region must lie inside the level.
    """
    lcm = math.lcm(*[int(d) for d in levels])
    cell = ((_FIELD_W // lcm) * lcm, (_FIELD_H // lcm) * lcm)
    r = _LevelRenderer(_TissueField(width, height, seed, tissue), int(downsample), seed, cell)
    if x < 0 or y < 0 or x + w > r.width or y + h > r.height:
        raise ValueError(f"region {x},{y} {w}x{h} is outside the level ({r.width}x{r.height})")
    return np.ascontiguousarray(r.rows(y, h)[:, x:x + w])


def write_corrupt_copies(src: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Broken variants of ``src`` for bad-input tests: ``truncated`` (first half of the bytes), ``empty``
    (zero bytes) and ``text`` (a text file with the .svs extension). Returns name -> path."""
    src, out_dir = Path(src), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_len = src.stat().st_size
    truncated = out_dir / f"truncated{src.suffix}"
    with src.open("rb") as fin, truncated.open("wb") as fout:
        remaining = data_len // 2
        while remaining > 0:
            chunk = fin.read(min(remaining, 1 << 22))
            fout.write(chunk)
            remaining -= len(chunk)
    empty = out_dir / f"empty{src.suffix}"
    empty.write_bytes(b"")
    text = out_dir / "notes.svs"
    text.write_text("This is not a slide.\nJust some text with an .svs extension.\n")
    return {"truncated": truncated, "empty": empty, "text": text}
