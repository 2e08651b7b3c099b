"""Tests for the synthetic BreakHis generator (ingest.synthetic.breakhis_tree / ingest.synthetic.he_render)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from ingest.breakhis_names import CLASSES, MAGNIFICATIONS, parse_name, relative_path
from ingest.synthetic.breakhis_tree import SyntheticConfig, generate_tree, make_grid, patients_for, render_image

SMALL = {"height": 115, "width": 175}


def test_render_shape_dtype_and_determinism() -> None:
    a = render_image("ductal_carcinoma", "100X", "14-15001", 3, **SMALL)
    b = render_image("ductal_carcinoma", "100X", "14-15001", 3, **SMALL)
    assert a.shape == (115, 175, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_image("ductal_carcinoma", "100X", "14-15001", 4, **SMALL))
    assert not np.array_equal(a, render_image("ductal_carcinoma", "100X", "14-15002", 3, **SMALL))
    assert not np.array_equal(a, render_image("ductal_carcinoma", "100X", "14-15001", 3, seed=1, **SMALL))
    full = render_image("adenosis", "40X", "14-10001", 1)
    assert full.shape == (460, 700, 3) and full.dtype == np.uint8


def test_render_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        render_image("carcinoma", "40X", "14-1", 1)
    with pytest.raises(ValueError, match="magnification"):
        render_image("adenosis", "50X", "14-1", 1)


@pytest.mark.parametrize("cls", CLASSES)
def test_colour_statistics_look_like_he(cls: str) -> None:
    # Bounds chosen from the real BreakHis sample: mean RGB there ranges from grey-lavender (191, 191, 195)
    # to magenta (217, 113, 194); green is never the dominant channel and nuclei are much darker than the median.
    for patient in patients_for(cls, SyntheticConfig(patients_per_class=2)):
        img = render_image(cls, "100X", patient, 1).astype(np.float32)
        r, g, b = img[..., 0].mean(), img[..., 1].mean(), img[..., 2].mean()
        assert g <= min(r, b) + 5 and b > g, (r, g, b)  # eosin pink / hematoxylin purple absorb green most
        assert 140 < (r + g + b) / 3 < 235, (r, g, b)
        background = (img.min(axis=2) > 215).mean()  # near-white glass
        assert background < 0.6
        lum = img.mean(axis=2)
        assert np.percentile(lum, 1) < np.median(lum) - 35  # dark hematoxylin nuclei exist
        assert img.std() > 12  # textured, not flat


def _opening_survival(img: np.ndarray) -> float:
    """Fraction of the darkest 5% of pixels (nuclei) that survives a 7x7 morphological opening (blobs >= 7 px)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    lum = img.astype(np.float32).mean(axis=2)
    mask = lum < np.percentile(lum, 5)
    return float(ndimage.binary_opening(mask, np.ones((7, 7), bool)).sum() / max(mask.sum(), 1))


def _autocorr_length(img: np.ndarray) -> float:
    """Lag (px) at which the autocorrelation of the dark-pixel (nuclei) mask drops below 0.5."""
    lum = img.astype(np.float32).mean(axis=2)
    dark = (lum < np.percentile(lum, 8)).astype(np.float32)
    dark -= dark.mean()
    spec = np.abs(np.fft.rfft2(dark)) ** 2
    ac = np.fft.irfft2(spec, s=dark.shape)
    ac /= ac[0, 0]
    prof = 0.5 * (ac[0, :60] + ac[:60, 0])
    below = np.flatnonzero(prof < 0.5)
    return float(below[0]) if below.size else 60.0


def test_high_magnification_has_larger_nuclei() -> None:
    classes = ("lobular_carcinoma", "fibroadenoma", "adenosis")
    low = [render_image(c, "40X", "14-1", 1) for c in classes]
    high = [render_image(c, "400X", "14-1", 1) for c in classes]
    assert np.mean([_autocorr_length(i) for i in high]) > 3 * np.mean([_autocorr_length(i) for i in low])
    # 40X nuclei are ~3 px and vanish under a 7x7 opening; 400X nuclei are ~30 px and survive it.
    assert max(_opening_survival(i) for i in low) < 0.15
    assert min(_opening_survival(i) for i in high) > 0.5


def test_patients_are_distinct_and_well_formed() -> None:
    cfg = SyntheticConfig(patients_per_class=3)
    ids = [p for c in CLASSES for p in patients_for(c, cfg)]
    assert len(ids) == len(set(ids)) == 24
    assert all(re.fullmatch(r"\d+-[0-9A-Za-z]+", p) for p in ids)
    assert patients_for("adenosis", cfg)[0] == "14-10001"


def test_generate_tree_layout_and_idempotence(tmp_path) -> None:
    cfg = SyntheticConfig(patients_per_class=1, images_per_magnification=2, magnifications=("40X", "400X"),
                          classes=("adenosis", "mucinous_carcinoma"), height=46, width=70, seed=3)
    calls: list[tuple[int, int]] = []
    paths = generate_tree(tmp_path, cfg, progress=lambda d, t: calls.append((d, t)))
    assert len(paths) == cfg.total_images == 8
    assert calls[-1] == (8, 8) and [d for d, _ in calls] == list(range(1, 9))
    expected = {tmp_path / relative_path(c, p, m, s) for c in cfg.classes for p in patients_for(c, cfg)
                for m in cfg.magnifications for s in (1, 2)}
    assert set(paths) == expected
    for path in paths:
        name = parse_name(path)
        assert name.class_name in cfg.classes and name.magnification in cfg.magnifications
        assert path.parent.name == name.magnification
        with Image.open(path) as im:
            assert im.size == (70, 46) and im.mode == "RGB"
    first = paths[0]
    name = parse_name(first)
    arr = render_image(name.class_name, name.magnification, name.patient, name.seq, seed=3, height=46, width=70)
    assert np.array_equal(np.asarray(Image.open(first)), arr)
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    again = generate_tree(tmp_path, cfg)
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes
    assert not list(tmp_path.rglob("*.tmp"))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="patients_per_class"):
        SyntheticConfig(patients_per_class=0)
    with pytest.raises(ValueError, match="images_per_magnification"):
        SyntheticConfig(images_per_magnification=0)
    with pytest.raises(ValueError, match="magnifications"):
        SyntheticConfig(magnifications=("40X", "50X"))
    with pytest.raises(ValueError, match="duplicates"):
        SyntheticConfig(classes=("adenosis", "adenosis"))
    with pytest.raises(ValueError, match="height/width"):
        SyntheticConfig(height=4)
    with pytest.raises(ValueError, match="must be an int"):
        SyntheticConfig(seed=1.5)  # type: ignore[arg-type]
    assert SyntheticConfig().total_images == 8 * 4 * 4 * 8
    assert SyntheticConfig().magnifications == MAGNIFICATIONS


def test_make_grid(tmp_path) -> None:
    out = make_grid(tmp_path / "grid.png", tile_width=64)
    with Image.open(out) as im:
        tile_h = round(64 * 460 / 700)
        assert im.size == (150 + 4 * 64, 22 + 8 * tile_h)
        arr = np.asarray(im.convert("RGB"))
    assert arr[22:, 150:].std() > 10  # tiles were drawn
