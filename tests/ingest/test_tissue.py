import numpy as np
import pytest

from ingest.tissue import TissueConfig, detect_tissue, gpu_available, otsu_threshold, tile_fractions


def _slide_thumbnail(seed=0):
    """White glass with noise, a pink tissue disc with a small lumen, and a speck of dust."""
    rng = np.random.default_rng(seed)
    h, w = 200, 300
    img = np.clip(rng.normal(243, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 100) ** 2 + (xx - 120) ** 2 < 60**2
    img[disc] = np.clip(rng.normal((200, 120, 170), 12, (disc.sum(), 3)), 0, 255).astype(np.uint8)
    lumen = (yy - 100) ** 2 + (xx - 120) ** 2 < 4**2
    img[lumen] = 240
    img[10:12, 280:282] = (150, 60, 120)  # 4-pixel speck
    return img, disc


def test_otsu_separates_two_modes():
    values = np.concatenate([np.full(100, 20), np.full(100, 200)]).astype(np.uint8)
    assert 20 <= otsu_threshold(values) < 200


def test_detects_the_disc_fills_small_holes_and_drops_specks():
    img, disc = _slide_thumbnail()
    mask = detect_tissue(img, TissueConfig(min_area_fraction=1e-3), device="cpu")
    assert mask.shape == disc.shape and mask.dtype == bool
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.95
    assert mask[100, 120]  # the lumen hole was filled
    assert not mask[5:15, 275:285].any()  # the speck was dropped


def test_blank_slide_has_no_tissue():
    rng = np.random.default_rng(1)
    blank = np.clip(rng.normal(242, 4, (120, 160, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(blank, device="cpu").any()


def test_tile_fractions_match_direct_means():
    rng = np.random.default_rng(2)
    mask = rng.random((50, 80)) > 0.6
    xs, ys = np.array([0, 64, 128, 300]), np.array([0, 32, 96, 160])
    got = tile_fractions(mask, 4.0, xs, ys, 32.0)
    for k in range(len(xs)):
        x0, y0 = xs[k] // 4, ys[k] // 4
        assert got[k] == pytest.approx(mask[y0:y0 + 8, x0:x0 + 8].mean(), abs=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="RGB"):
        detect_tissue(np.zeros((10, 10), np.uint8), device="cpu")
    with pytest.raises(ValueError, match="device"):
        detect_tissue(np.zeros((10, 10, 3), np.uint8), device="tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="no CUDA device")
def test_gpu_matches_cpu():
    img, _ = _slide_thumbnail()
    assert np.array_equal(detect_tissue(img, device="cuda"), detect_tissue(img, device="cpu"))
