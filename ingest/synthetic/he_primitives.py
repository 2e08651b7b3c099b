"""The vectorised raster primitives of the H&E renderer (:mod:`ingest.synthetic.he_render`), free of any scene state.

Smooth noise (a small random grid upsampled with Pillow), elliptical depth fields evaluated in their bounding boxes
(:func:`depth_field`: glands, nests, papillae), nuclei stamped as ``(N, K, K)`` stacks grouped by size and
scattered with :func:`numpy.bincount` (:func:`stamp_nuclei`), and the optics: a ``[1, 2, 1]`` blur, an exact 2x
bilinear upsampling and the illumination vignette. All maps are float32 ``(h, w)`` arrays in pixels.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image


def smooth_noise(rng: np.random.Generator, h: int, w: int, scale_px: float) -> np.ndarray:
    """Unit-variance-ish smooth noise with feature size ~``scale_px`` (random grid upsampled bicubically)."""
    if scale_px <= 1.5:
        return rng.standard_normal((h, w), dtype=np.float32)
    gh, gw = max(2, int(h / scale_px) + 2), max(2, int(w / scale_px) + 2)
    small = rng.standard_normal((gh, gw), dtype=np.float32)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    return big * (1.0 / max(float(big[::7, ::7].std()), 1e-3))


def depth_field(h: int, w: int, ell: np.ndarray, floor: float = -1e4, outside: float = 3.0) -> np.ndarray:
    """Max over ellipses ``(cx, cy, a, b, theta)`` (pixels) of the approximate inward depth ``(1 - rho) * b``.

    Positive inside an ellipse (about the distance to its border in pixels), negative outside; evaluated
    only in a bounding box grown by ``outside`` pixels (farther away the value is ``floor``).
    """
    ell = np.asarray(ell, np.float32).reshape(-1, 5)
    reach = np.maximum(ell[:, 2], ell[:, 3]) + outside + 2
    ell, reach = ell[(ell[:, 0] > -reach) & (ell[:, 0] < w + reach) & (ell[:, 1] > -reach) & (ell[:, 1] < h + reach)], \
        reach[(ell[:, 0] > -reach) & (ell[:, 0] < w + reach) & (ell[:, 1] > -reach) & (ell[:, 1] < h + reach)]
    pad = 100  # >= 2 * the largest vectorised half-width, so every stack index is on the canvas
    out = np.full((h + 2 * pad, w + 2 * pad), floor, dtype=np.float32)
    small = 2 * np.ceil(reach) + 1 <= pad // 2
    for cx, cy, a, b, t in ell[~small]:  # the few large ellipses: loop over their clipped bounding boxes
        r = max(a, b) + outside + 2
        x0, x1, y0, y1 = max(0, int(cx - r)), min(w, int(cx + r) + 1), max(0, int(cy - r)), min(h, int(cy + r) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32) - cx
        ys = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        c, s = math.cos(t), math.sin(t)
        u = (xs * c + ys * s) * (1.0 / a)
        v = (ys * c - xs * s) * (1.0 / b)
        d = (1.0 - np.sqrt(u * u + v * v)) * min(a, b)
        view = out[y0 + pad:y1 + pad, x0 + pad:x1 + pad]
        np.maximum(view, d, out=view)
    if small.any():  # many small ellipses: (G, K, K) stacks scattered with np.maximum.at, grouped by size
        sm, kk = ell[small], (2 * np.ceil(reach[small]) + 1).astype(np.int64)
        kk = np.minimum(((kk + 3) // 4) * 4 + 1, pad // 2 + 1)
        for k in map(int, np.unique(kk)):  # Python int: an np.int64 would promote float32 maths to float64
            e = sm[kk == k]
            off = np.arange(k, dtype=np.float32) - k // 2
            ix, iy = np.floor(e[:, 0]).astype(np.int64), np.floor(e[:, 1]).astype(np.int64)
            dx = off[None, None, :] - (e[:, 0] - ix).astype(np.float32)[:, None, None]
            dy = off[None, :, None] - (e[:, 1] - iy).astype(np.float32)[:, None, None]
            c, s = np.cos(e[:, 4])[:, None, None], np.sin(e[:, 4])[:, None, None]
            u = (dx * c + dy * s) / e[:, 2, None, None]
            v = (dy * c - dx * s) / e[:, 3, None, None]
            d = (1.0 - np.sqrt(u * u + v * v)) * np.minimum(e[:, 2], e[:, 3])[:, None, None]
            ioff = off.astype(np.int64)[:, None] * out.shape[1] + off.astype(np.int64)[None, :]
            idx = ((iy + pad) * out.shape[1] + ix + pad)[:, None, None] + ioff[None]
            np.maximum.at(out.reshape(-1), idx.ravel(), d.ravel())
    return out[pad:pad + h, pad:pad + w]


def stamp_nuclei(h: int, w: int, x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, phi: np.ndarray,
                 dark: np.ndarray, irr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hematoxylin map of ``N`` irregular elliptical nuclei (semi-axes ``a``, ``b`` px) summed into an ``(h, w)`` map.

    Nuclei are grouped by size so each group is stamped as an ``(n, K, K)`` stack with a fitting ``K``,
    accumulated with :func:`numpy.bincount` into a padded canvas (no per-pixel bounds checks).
    """
    x, y, a, b, phi, dark, irr = (np.asarray(v, np.float32) for v in (x, y, a, b, phi, dark, irr))
    e2 = irr * rng.uniform(0.5, 1.5, len(x)).astype(np.float32)
    psi = rng.uniform(0, np.pi, len(x)).astype(np.float32)
    kneed = np.ceil(2 * np.maximum(a, b) * (1.0 + irr) + 2).astype(np.int64)
    buckets = np.array([*range(4, 25), 28, 32, 37, 43, 49, 57, 65, 75, 86, 100, 115, 133, 153, 177, 205])
    kb = buckets[np.minimum(np.searchsorted(buckets, kneed), len(buckets) - 1)]
    m = int(kb.max()) + 1 if len(kb) else 1  # padding so no stamp index leaves the canvas
    hp, wp = h + 2 * m, w + 2 * m
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = (ix >= -(kb // 2)) & (ix < w + kb // 2) & (iy >= -(kb // 2)) & (iy < h + kb // 2)
    idx_parts, val_parts = [], []
    for k in map(int, np.unique(kb[inside])):  # Python int keeps the float32 maths float32
        sel = np.flatnonzero((kb == k) & inside)
        sa, sb, sp, kx, ky = a[sel], b[sel], phi[sel], ix[sel], iy[sel]
        off = np.arange(k, dtype=np.float32) - k // 2
        dx = off[None, None, :] - (x[sel] - kx).astype(np.float32)[:, None, None]
        dy = off[None, :, None] - (y[sel] - ky).astype(np.float32)[:, None, None]
        c, s = np.cos(sp)[:, None, None], np.sin(sp)[:, None, None]
        ia, ib = (1.0 / sa)[:, None, None], (1.0 / sb)[:, None, None]
        sharp = (1.2 * np.maximum(np.minimum(sa, sb), 1.0))[:, None, None]
        if k <= 9:  # small nuclei: plain ellipse from its quadratic form (few full-size array operations)
            qa, qc = (c * ia) ** 2 + (s * ib) ** 2, (s * ia) ** 2 + (c * ib) ** 2
            qb = 2 * c * s * (ia * ia - ib * ib)
            r2 = (qa * dx * dx + qc * dy * dy) + (qb * dx) * dy
            val = np.clip((1.0 - r2) * (0.5 * sharp), 0.0, 1.0)
        else:  # large nuclei: irregular outline (2nd/3rd angular harmonics) and a darker rim
            u = (dx * c + dy * s) * ia
            v = (dy * c - dx * s) * ib
            uu, vv = u * u, v * v
            r2 = uu + vv + 1e-6
            rho = np.sqrt(r2)
            inv = 1.0 / r2
            ps = psi[sel]
            mod = 1.0 + e2[sel][:, None, None] * (((uu - vv) * np.cos(ps)[:, None, None]
                                                    + 2 * u * v * np.sin(ps)[:, None, None]) * inv
                                                   + 0.6 * u * (uu - 3 * vv) * inv / rho)
            rho /= mod
            val = np.clip((1.0 - rho) * sharp, 0.0, 1.0)
            val *= 0.8 + 0.25 * np.minimum(rho, 1.0)
        val *= dark[sel][:, None, None]
        ioff = (off.astype(np.int64)[:, None] * wp + off.astype(np.int64)[None, :])[None]
        idx = ((ky + m) * wp + (kx + m))[:, None, None] + ioff
        idx_parts.append(idx.ravel())
        val_parts.append(val.ravel())
    if not idx_parts:
        return np.zeros((h, w), np.float32)
    out = np.bincount(np.concatenate(idx_parts), weights=np.concatenate(val_parts), minlength=hp * wp)
    return out.reshape(hp, wp)[m:m + h, m:m + w].astype(np.float32)


def upsample2x(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Exact 2x bilinear upsampling (half-pixel aligned, edges replicated) cropped to ``(h, w)``."""
    p = np.pad(m, 1, mode="edge")
    c, q = p[1:-1] * np.float32(0.75), p * np.float32(0.25)
    rows = np.empty((2 * m.shape[0], m.shape[1] + 2), np.float32)
    rows[0::2], rows[1::2] = c + q[:-2], c + q[2:]
    c, q = rows[:, 1:-1] * np.float32(0.75), rows * np.float32(0.25)
    out = np.empty((rows.shape[0], 2 * m.shape[1]), np.float32)
    out[:, 0::2], out[:, 1::2] = c + q[:, :-2], c + q[:, 2:]
    return out[:h, :w]


def blur121(img: np.ndarray, passes: int) -> np.ndarray:
    """Separable ``[1, 2, 1] / 4`` blur applied ``passes`` times (edges replicated); a cheap Gaussian."""
    for _ in range(passes):
        p = np.pad(img, 1, mode="edge")
        img = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
        img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) * 0.25
    return img


@functools.lru_cache(maxsize=8)
def log_vignette(h: int, w: int) -> np.ndarray:
    """Log of the illumination fall-off towards the field edges (cached per image size, read-only)."""
    yv = np.log(1.0 - 0.05 * np.linspace(-1, 1, h, dtype=np.float32) ** 2)
    xv = np.log(1.0 - 0.07 * np.linspace(-1, 1, w, dtype=np.float32) ** 2)
    v = (yv[:, None] + xv[None, :]).astype(np.float32)
    v.setflags(write=False)
    return v
