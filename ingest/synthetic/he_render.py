"""Procedural renderer of synthetic H&E breast-histology fields (the image half of
:mod:`ingest.synthetic.breakhis_tree`).

Tissue is composed as hematoxylin / eosin *concentration* maps (float32) and turned into RGB with the
Beer-Lambert law, ``RGB = 255 * exp(-(H * h_vec + E * e_vec))``, using Ruifrok-like stain vectors that
vary per patient. Lengths are specified in "physical units" ``u`` (one pixel at 40X); at magnification
``m`` one unit spans ``m / 40`` pixels, so the field of view shrinks as ``1 / m`` and nuclei grow from
~3 px (40X) to ~30-45 px (400X). This module holds the scene: stroma and glass, the class-specific structures
(glands, nests, files, papillae) with their nuclei, and the stain optics. Everything is vectorised through the
raster primitives of :mod:`ingest.synthetic.he_primitives` (nuclei stamped as ``(N, K, K)`` stacks, elliptical
depth fields, smooth noise, blur and upsampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ingest.synthetic.he_primitives import blur121, depth_field, log_vignette, smooth_noise, stamp_nuclei, upsample2x

#: Pixels per physical unit for each magnification (40X is the reference).
SCALE: dict[str, float] = {"40X": 1.0, "100X": 2.5, "200X": 5.0, "400X": 10.0}
_H_VEC = np.array([0.65, 0.70, 0.29], dtype=np.float32)  # hematoxylin optical density per R, G, B
_E_VEC = np.array([0.07, 0.99, 0.11], dtype=np.float32)  # eosin
_BLUR = {"40X": 0, "100X": 0, "200X": 1, "400X": 2}  # extra half-res [1,2,1] passes: high power is softer

# Per-class nuclear morphology: mean diameter (u), size CV, aspect ratio, hyperchromasia, shape irregularity.
_NUC: dict[str, tuple[float, float, float, float, float]] = {
    "adenosis": (2.8, 0.08, 1.25, 1.0, 0.05),
    "fibroadenoma": (2.9, 0.10, 1.3, 1.0, 0.06),
    "phyllodes_tumor": (3.1, 0.14, 1.4, 1.1, 0.08),
    "tubular_adenoma": (3.0, 0.08, 1.2, 1.05, 0.05),
    "ductal_carcinoma": (4.6, 0.30, 1.35, 1.45, 0.22),
    "lobular_carcinoma": (3.0, 0.08, 1.15, 1.15, 0.06),
    "mucinous_carcinoma": (3.8, 0.20, 1.3, 1.25, 0.14),
    "papillary_carcinoma": (3.5, 0.16, 1.9, 1.25, 0.10),
}


@dataclass
class _Scene:
    """Mutable state of one field being rendered (maps in pixels, lengths converted with ``f``)."""

    rng: np.random.Generator
    h: int
    w: int
    f: float
    nuc: tuple[float, float, float, float, float]
    E: np.ndarray
    H: np.ndarray
    tissue: np.ndarray
    nuclei: list[tuple[np.ndarray, ...]] = field(default_factory=list)

    @property
    def extent(self) -> tuple[float, float]:
        """Field of view in physical units (width, height)."""
        return self.w / self.f, self.h / self.f

    def count(self, area_per_item_u: float, margin_u: float = 0.0) -> int:
        """Poisson count of items with the given physical density over the (margin-expanded) field."""
        lx, ly = self.extent
        return int(self.rng.poisson((lx + 2 * margin_u) * (ly + 2 * margin_u) / area_per_item_u))

    def centers(self, n: int, margin_u: float = 0.0, anchor: bool = False) -> np.ndarray:
        """``n`` uniform centres in pixels over the field expanded by ``margin_u`` on every side.

        With ``anchor`` at least one centre is returned and the first lies in the middle of the field, so the
        class's key structure is always visible (BreakHis fields were chosen to show the lesion).
        """
        m = margin_u * self.f
        p = self.rng.uniform((-m, -m), (self.w + m, self.h + m), size=(max(n, int(anchor)), 2)).astype(np.float32)
        if anchor:
            p[0] = self.rng.uniform((0.2 * self.w, 0.2 * self.h), (0.8 * self.w, 0.8 * self.h))
        return p


def _add_nuclei(sc: _Scene, x: np.ndarray, y: np.ndarray, *, scale: float = 1.0, aspect: float | None = None,
                phi: np.ndarray | None = None, dark: float = 1.0) -> None:
    """Queue nuclei at pixel positions with the class morphology (optionally resized / elongated / oriented)."""
    n = len(x)
    if n == 0:
        return
    d, cv, asp, dk, irr = sc.nuc
    asp = asp if aspect is None else aspect
    size = d * scale * np.clip(sc.rng.lognormal(0.0, cv, n), 0.55, 2.0) * sc.f / 2.0
    ratio = np.sqrt(asp * sc.rng.uniform(0.85, 1.15, n))
    ang = sc.rng.uniform(0, np.pi, n) if phi is None else phi + sc.rng.normal(0, 0.15, n)
    darkness = dk * dark * np.clip(sc.rng.normal(1.0, 0.6 * cv + 0.05, n), 0.5, 1.8)
    sc.nuclei.append((x, y, size * ratio, size / ratio, ang, darkness, np.full(n, irr)))


def _grid_points(sc: _Scene, mask: np.ndarray, spacing_u: float, jitter: float = 0.35) -> tuple[np.ndarray, ...]:
    """Jittered-grid points (pixels) with spacing ``spacing_u`` that fall where ``mask`` is true."""
    s = spacing_u * sc.f
    gx, gy = np.meshgrid(np.arange(s / 2, sc.w, s), np.arange(s / 2, sc.h, s))
    x = gx.ravel() + sc.rng.uniform(-jitter, jitter, gx.size) * s
    y = gy.ravel() + sc.rng.uniform(-jitter, jitter, gy.size) * s
    xi, yi = np.clip(x, 0, sc.w - 1).astype(np.int64), np.clip(y, 0, sc.h - 1).astype(np.int64)
    ok = mask[yi, xi]
    return x[ok], y[ok]


def _glands(sc: _Scene, ell: np.ndarray, wall_u: float, *, lumen: str = "white", jag: float = 0.8,
            cyto: tuple[float, float] = (0.16, 0.42), lining: str = "ring", columnar: bool = False,
            spacing: float = 1.15) -> np.ndarray:
    """Draw epithelial structures (ellipses in pixels) with an epithelial wall and a lumen; returns the depth map.

    ``lumen``: "white" (glass), "mucin" (pale blue-grey pool) or "solid" (filled with cells).
    ``lining``: "ring" (one layer of nuclei along the wall), "fill" (nuclei throughout the epithelium) or "none";
    ``spacing``: distance between filled nuclei in nuclear diameters.
    """
    if len(ell) == 0:
        return np.full((sc.h, sc.w), -1e4, np.float32)
    d = depth_field(sc.h, sc.w, ell, outside=2.0 * jag * sc.f + 1.0)
    wall = wall_u * sc.f
    if jag > 0:
        d += smooth_noise(sc.rng, sc.h, sc.w, 4.0 * sc.f) * (jag * sc.f)
    epi = (d > 0) & (d <= wall)
    inner = d > wall
    sc.H[epi | inner] = cyto[0]
    sc.E[epi | inner] = cyto[1]
    if lumen == "white":
        sc.tissue[inner] = 0.0
    elif lumen == "mucin":
        sc.H[inner], sc.E[inner] = 0.13, 0.07
    if lining == "none":
        return d
    if lining == "fill" or lumen == "solid":
        x, y = _grid_points(sc, epi | inner if lumen == "solid" else epi, sc.nuc[0] * spacing)
        _add_nuclei(sc, x, y)
    else:  # ring of nuclei half-way through the wall
        cx, cy, a, b, t = (ell[:, i] for i in range(5))
        ai, bi = np.maximum(a - wall / 2, 1.0), np.maximum(b - wall / 2, 1.0)
        per = np.pi * (3 * (ai + bi) - np.sqrt((3 * ai + bi) * (ai + 3 * bi)))
        cnt = np.maximum((per / (sc.nuc[0] * 1.25 * sc.f)).astype(np.int64), 3)
        g = np.repeat(np.arange(len(ell)), cnt)
        start = np.repeat(np.cumsum(cnt) - cnt, cnt)
        tt = (np.arange(g.size) - start) / cnt[g] * 2 * np.pi + sc.rng.uniform(0, 2 * np.pi, len(ell))[g]
        tt = tt + sc.rng.normal(0, 0.04, g.size)
        px, py = ai[g] * np.cos(tt), bi[g] * np.sin(tt)
        c, s = np.cos(t[g]), np.sin(t[g])
        x, y = cx[g] + px * c - py * s, cy[g] + px * s + py * c
        normal = np.arctan2(ai[g] * np.sin(tt), bi[g] * np.cos(tt)) + t[g]
        _add_nuclei(sc, x, y, phi=normal if columnar else normal + np.pi / 2, aspect=1.6 if columnar else 1.4)
    return d


def _ellipses(sc: _Scene, centers: np.ndarray, a_u: tuple[float, float], ratio: tuple[float, float],
              theta: float | None = None, spread: float = 0.3) -> np.ndarray:
    """Random ellipses ``(cx, cy, a, b, theta)`` in pixels at the given centres."""
    n = len(centers)
    a = sc.rng.uniform(*a_u, n) * sc.f
    b = a * sc.rng.uniform(*ratio, n)
    t = sc.rng.uniform(0, np.pi, n) if theta is None else theta + sc.rng.normal(0, spread, n)
    return np.column_stack([centers, a, np.maximum(b, 1.0), t]).astype(np.float32)


def _stroma_nuclei(sc: _Scene, area_u: float, theta: float, mask: np.ndarray, aspect: float = 3.0) -> None:
    """Scatter spindle-shaped fibroblast nuclei aligned with the fibres where ``mask`` holds."""
    n = sc.count(area_u)
    p = sc.centers(n)
    xi, yi = np.clip(p[:, 0], 0, sc.w - 1).astype(np.int64), np.clip(p[:, 1], 0, sc.h - 1).astype(np.int64)
    p = p[mask[yi, xi]]
    _add_nuclei(sc, p[:, 0], p[:, 1], scale=2.7 / sc.nuc[0], aspect=aspect, phi=np.full(len(p), theta), dark=0.9)


def _compose(sc: _Scene, cls: str, theta: float, pat: dict[str, float]) -> None:
    """Add the class-specific structures to the scene."""
    rng, f = sc.rng, sc.f
    if cls == "adenosis":
        lob = sc.centers(sc.count(260.0**2, 100), 100, anchor=True)
        cen = []
        for cx, cy in lob:
            r = rng.uniform(50, 110) * f
            k = int(rng.poisson(0.55 * (r / f) ** 2 / 6.5**2)) + 1
            ang, rad = rng.uniform(0, 2 * np.pi, k), r * np.sqrt(rng.uniform(0, 1, k))
            cen.append(np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)]))
        _glands(sc, _ellipses(sc, np.concatenate(cen), (3.8, 6.5), (0.55, 1.0)), 2.6)
        _stroma_nuclei(sc, 12.0**2 / pat["cell"], theta, _stroma(sc))
    elif cls == "fibroadenoma":
        ell = _ellipses(sc, sc.centers(sc.count(95.0**2, 60), 60, anchor=True), (15, 55), (0.06, 0.16), theta, 0.6)
        _glands(sc, ell, 2.8, jag=1.2)
        _stroma_nuclei(sc, 11.0**2 / pat["cell"], theta, _stroma(sc))
    elif cls == "phyllodes_tumor":
        ell = _ellipses(sc, sc.centers(sc.count(170.0**2, 150), 150, anchor=True), (50, 150), (0.03, 0.08), theta, 0.5)
        _glands(sc, ell, 2.2, jag=2.0)
        _stroma_nuclei(sc, 5.0**2 / pat["cell"], theta, _stroma(sc), aspect=3.5)
    elif cls == "tubular_adenoma":
        s = rng.uniform(11.5, 13.5)
        gx, gy = np.meshgrid(np.arange(-s, sc.w / f + s, s), np.arange(-s, sc.h / f + s, s * 0.87))
        gx = gx + (np.arange(gx.shape[0])[:, None] % 2) * s / 2
        c = np.column_stack([gx.ravel(), gy.ravel()]) * f + rng.normal(0, 1.8 * f, (gx.size, 2))
        lob = smooth_noise(rng, sc.h, sc.w, 90 * f) > -0.6
        ci = np.clip(c, 0, [sc.w - 1, sc.h - 1]).astype(np.int64)
        _glands(sc, _ellipses(sc, c[lob[ci[:, 1], ci[:, 0]]], (4.2, 5.8), (0.7, 1.0)), 3.0, columnar=True)
        _stroma_nuclei(sc, 14.0**2 / pat["cell"], theta, _stroma(sc))
    elif cls == "ductal_carcinoma":
        ell = _ellipses(sc, sc.centers(sc.count(85.0**2, 90), 90, anchor=True), (30, 90), (0.45, 1.0))
        _glands(sc, ell, 1e3, lumen="solid", jag=6.0, cyto=(0.24, 0.38), spacing=1.4)
        _stroma_nuclei(sc, 12.0**2 / pat["cell"], theta, _stroma(sc))
    elif cls == "lobular_carcinoma":
        _lobular_files(sc, theta, pat)
    elif cls == "mucinous_carcinoma":
        ell = _ellipses(sc, sc.centers(sc.count(110.0**2, 120), 120, anchor=True), (40, 120), (0.5, 1.0))
        d = _glands(sc, ell, 0.8, lumen="mucin", lining="none", jag=1.5, cyto=(0.1, 0.45))
        pools = d > 2 * f
        cl = sc.centers(sc.count(45.0**2), anchor=True)
        ci = np.clip(cl, 0, [sc.w - 1, sc.h - 1]).astype(np.int64)
        cl = cl[pools[ci[:, 1], ci[:, 0]]]
        _glands(sc, _ellipses(sc, cl, (5, 13), (0.5, 1.0)), 1e3, lumen="solid", jag=1.5, cyto=(0.22, 0.4))
    elif cls == "papillary_carcinoma":
        _papillary_fronds(sc, theta)


def _stroma(sc: _Scene) -> np.ndarray:
    """Where the field is stroma now: tissue that no epithelium has been drawn over (read from the live maps)."""
    return (sc.tissue > 0) & (sc.H < 0.12)


def _lobular_files(sc: _Scene, theta: float, pat: dict[str, float]) -> None:
    """Lobular carcinoma: single files of small cells winding along the stroma, loose cells between them."""
    rng, f = sc.rng, sc.f
    n = sc.count(55.0**2, 30)
    steps = 14
    p0 = sc.centers(n, 30)
    ang = theta + rng.normal(0, 0.35, (n, 1)) + np.cumsum(rng.normal(0, 0.12, (n, steps)), axis=1)
    sp = 4.2 * f
    x = p0[:, :1] + np.cumsum(sp * np.cos(ang), axis=1) + rng.normal(0, 0.4 * f, (n, steps))
    y = p0[:, 1:] + np.cumsum(sp * np.sin(ang), axis=1) + rng.normal(0, 0.4 * f, (n, steps))
    keep = rng.uniform(0, 1, (n, steps)) < 0.85
    _add_nuclei(sc, x[keep], y[keep], aspect=1.2)
    loose = sc.centers(sc.count(16.0**2))
    _add_nuclei(sc, loose[:, 0], loose[:, 1])
    _stroma_nuclei(sc, 16.0**2 / pat["cell"], theta, _stroma(sc))


def _papillary_fronds(sc: _Scene, theta: float) -> None:
    """Papillary carcinoma: branching fibrovascular cores (a random tree of segments) lined by epithelium."""
    rng, f = sc.rng, sc.f
    segs = []
    roots = sc.centers(sc.count(110.0**2, 60), 60, anchor=True)
    for rx, ry in roots:
        a0 = rng.uniform(0, 2 * np.pi)
        stack = [(rx, ry, a0, 0), (rx, ry, a0 + np.pi, 1)]
        while stack and len(segs) < 400:
            x0, y0, a, depth = stack.pop()
            length = rng.uniform(18, 40) * f
            x1, y1 = x0 + length * math.cos(a), y0 + length * math.sin(a)
            segs.append(((x0 + x1) / 2, (y0 + y1) / 2, length / 2 + 3 * f, rng.uniform(2.5, 5.0) * f, a))
            if depth < 4:
                for _k in range(1 + int(rng.uniform() < 0.6)):
                    stack.append((x1, y1, a + rng.normal(0, 0.7), depth + 1))
    core = depth_field(sc.h, sc.w, np.array(segs, np.float32), outside=7.0 * f)
    core += smooth_noise(rng, sc.h, sc.w, 6 * f) * f
    epi_u = 5.0
    epi = (core <= 0) & (core > -epi_u * f)
    sc.tissue[(core <= -epi_u * f)] *= 0.0
    sc.H[epi], sc.E[epi] = 0.22, 0.4
    x, y = _grid_points(sc, epi, sc.nuc[0] * 1.0)
    _add_nuclei(sc, x, y)
    _stroma_nuclei(sc, 9.0**2, theta, core > 0)


def render_field(cls: str, magnification: str, patient_rng: np.random.Generator, rng: np.random.Generator,
                 h: int, w: int) -> np.ndarray:
    """Render one ``(h, w, 3)`` uint8 field of class ``cls``; patient-level style comes from ``patient_rng``."""
    f = SCALE[magnification]
    pr = patient_rng
    h_vec = _H_VEC + pr.normal(0, 0.05, 3).astype(np.float32)
    e_vec = _E_VEC + pr.normal(0, 0.05, 3).astype(np.float32)
    h_vec, e_vec = np.abs(h_vec) / np.linalg.norm(h_vec), np.abs(e_vec) / np.linalg.norm(e_vec)
    pat = {"h": pr.uniform(0.7, 1.3), "e": pr.uniform(0.5, 1.6), "cell": pr.uniform(0.7, 1.4),
           "gap": pr.uniform(-0.2, 0.25), "fib": pr.uniform(0.2, 0.5), "light": pr.uniform(0.88, 1.0),
           "tint": pr.normal(0, 0.035, 3), "theta": pr.uniform(0, np.pi)}
    # Background maps (stroma, glands, glass) are composed at half resolution and upsampled; nuclei at full.
    hl, wl = (h + 1) // 2, (w + 1) // 2
    sc = _Scene(rng, hl, wl, f / 2, _NUC[cls], np.zeros((hl, wl), np.float32), np.zeros((hl, wl), np.float32),
                np.ones((hl, wl), np.float32))
    theta = pat["theta"] + rng.normal(0, 0.6)
    # Stroma: wavy collagen fibres (a sinusoid across theta with a warped phase, broken into segments).
    yy, xx = np.arange(hl, dtype=np.float32)[:, None], np.arange(wl, dtype=np.float32)[None, :]
    lam = float(np.clip(rng.uniform(2.5, 4.0) * sc.f, 2.2, rng.uniform(3.0, 4.5)))
    warp = smooth_noise(rng, hl, wl, 30 * sc.f) * (2.0 * lam) + smooth_noise(rng, hl, wl, 6 * sc.f) * (0.5 * lam)
    phase = (xx * -math.sin(theta) + yy * math.cos(theta) + warp) * (2 * np.pi / lam)
    phase2 = (xx * -math.sin(theta + 0.35) + yy * math.cos(theta + 0.35) + 0.7 * warp) * (2 * np.pi / (1.7 * lam))
    fib = (0.5 + 0.5 * np.sin(phase)) * (0.55 + 0.45 * np.sin(phase2))  # two beating families: irregular bundles
    fib *= np.clip(0.6 + 0.7 * smooth_noise(rng, hl, wl, 2.5 * lam), 0.0, 1.4)
    patch = smooth_noise(rng, hl, wl, 40 * sc.f)
    dens = {"fibroadenoma": 0.32, "lobular_carcinoma": 0.5, "ductal_carcinoma": 0.48}.get(cls, 0.42)
    sc.E[:] = dens * (1.0 - pat["fib"] + pat["fib"] * 2.2 * fib) * (1.0 + 0.18 * patch)
    sc.H[:] = 0.05 + 0.02 * patch
    # Glass: low-frequency gaps in the section (tears, fat, edges); more in mucinous / phyllodes.
    gap_q = {"mucinous_carcinoma": 0.9, "phyllodes_tumor": 0.75, "fibroadenoma": 0.95}.get(cls, 1.15) + pat["gap"]
    gaps = smooth_noise(rng, hl, wl, 110 * sc.f) + 0.25 * smooth_noise(rng, hl, wl, 15 * sc.f)
    gap_q = max(gap_q, float(np.quantile(gaps[::8, ::8], 0.55)))  # fields are chosen to show mostly tissue
    sc.tissue[:] = np.clip((gap_q - gaps) * 4.0, 0.0, 1.0)
    _compose(sc, cls, theta, pat)
    hmap, emap = sc.H * sc.tissue, sc.E * sc.tissue
    if sc.nuclei:  # nuclei are stamped at half resolution too; the 2x bilinear upsampling acts as optical blur
        x, y, a, b, ang, dk, irr = (np.concatenate(col) for col in zip(*sc.nuclei, strict=True))
        on = sc.tissue[np.clip(y, 0, hl - 1).astype(np.int64), np.clip(x, 0, wl - 1).astype(np.int64)] > 0.5
        a_eff, b_eff = np.maximum(a[on], 0.85), np.maximum(b[on], 0.85)  # keep sub-pixel nuclei's ink
        dk = dk[on] * (a[on] * b[on]) / (a_eff * b_eff)
        nmap = stamp_nuclei(hl, wl, x[on], y[on], a_eff, b_eff, ang[on], dk, irr[on], rng=rng)
        if f > 2:  # granular chromatin, visible at high power
            nmap *= 1.0 + 0.2 * rng.standard_normal((hl, wl), dtype=np.float32)
        nmap = blur121(nmap, _BLUR[magnification])
        np.minimum(nmap, 1.6, out=nmap)
        hmap += nmap * np.float32(1.25 * pat["h"])
        np.minimum(nmap, 1.0, out=nmap)
        emap *= 1.0 - 0.5 * nmap
    hmap, emap = upsample2x(hmap, h, w), upsample2x(emap, h, w)
    grain = np.frombuffer(rng.bytes(h * w), np.uint8).reshape(h, w) & np.uint8(7)  # sensor noise, 0..7 levels
    log_light = log_vignette(h, w)
    out = np.empty((3, h, w), np.uint8)
    od, tmp = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    for c in range(3):  # Beer-Lambert: I = I0 * exp(-OD); planar, in preallocated buffers
        np.multiply(hmap, np.float32(-h_vec[c] * pat["h"]), out=od)
        np.multiply(emap, np.float32(-e_vec[c] * pat["e"]), out=tmp)
        od += tmp
        od += log_light
        od += np.float32(math.log(255.0 * pat["light"] - 3.5) - 0.04 - pat["tint"][c])  # grain adds 3.5 on average
        np.exp(od, out=od)
        od += grain
        np.clip(od, 0, 255, out=od)
        out[c] = od
    return np.stack(tuple(out), axis=-1)
