"""The synthetic pyramidal slide: layout, metadata, ground-truth mask, determinism, corrupt copies."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from ingest.synthetic.slide import (
    render_level_region,
    synthetic_tissue_mask,
    write_corrupt_copies,
    write_synthetic_slide,
)

W, H, LEVELS = 2048, 1536, (1, 4, 16)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "slide.tif", width=W, height=H, levels=LEVELS,
                                 seed=3)


def test_layout_and_metadata(slide):
    with tifffile.TiffFile(slide) as tif:
        pages = list(tif.pages)
        assert [(p.imagewidth, p.imagelength) for p in pages] == [(W // d, H // d) for d in LEVELS]
        for p in pages:
            assert p.is_tiled and p.tilewidth == 256 and p.compression == tifffile.COMPRESSION.JPEG
            assert p.description.startswith("Aperio Image Library")
            assert "|AppMag = 40|MPP = 0.25" in p.description
        x_res = pages[0].tags["XResolution"].value
        assert pages[0].tags["ResolutionUnit"].value == 3 and x_res[0] / x_res[1] == pytest.approx(1e4 / 0.25)
        base = pages[0].asarray()
    src = render_level_region(0, 0, W, H, width=W, height=H, levels=LEVELS, seed=3)
    diff = np.abs(base.astype(np.int16) - src)
    assert diff.mean() < 2.5 and np.percentile(diff, 99.9) < 40  # JPEG q90 with 4:2:0 chroma


def test_tissue_islands_match_mask(slide):
    with tifffile.TiffFile(slide) as tif:
        low = tif.pages[2].asarray()
    mask = synthetic_tissue_mask(W, H, 16, seed=3)
    assert mask.shape == low.shape[:2]
    assert 0.25 < mask.mean() < 0.55
    saturation = low.max(axis=2).astype(int) - low.min(axis=2)
    assert np.median(saturation[mask]) > 25 > np.median(saturation[~mask])
    assert low[~mask].mean() > 235
    # the mask is a function of level-0 coordinates: coarser masks are subsamples of finer ones
    fine = synthetic_tissue_mask(W, H, 4, seed=3)
    assert (fine[2::4, 2::4] == synthetic_tissue_mask(W, H, 16, seed=3)).mean() > 0.97


def test_deterministic_and_seeded(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.tif", width=512, height=384, levels=(1, 4), seed=1)
    b = write_synthetic_slide(tmp_path / "b.tif", width=512, height=384, levels=(1, 4), seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert not np.array_equal(synthetic_tissue_mask(512, 384, 4, seed=1), synthetic_tissue_mask(512, 384, 4, seed=2))
    assert not list(tmp_path.glob("*.partial"))


def test_odd_sizes_and_blank(tmp_path):
    p = write_synthetic_slide(tmp_path / "odd.tif", width=1000, height=700, levels=(1, 2, 8), tile=128,
                              tissue="none")
    with tifffile.TiffFile(p) as tif:
        assert [(pg.imagewidth, pg.imagelength) for pg in tif.pages] == [(1000, 700), (500, 350), (125, 88)]
        assert tif.pages[1].asarray().min() > 225
    assert not synthetic_tissue_mask(1000, 700, 8, tissue="none").any()


@pytest.mark.parametrize("kwargs", [dict(levels=(2, 4)), dict(levels=(1, 4, 4)), dict(tile=100),
                                    dict(quality=0), dict(tissue="cells")])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_synthetic_slide(tmp_path / "x.tif", width=256, height=256, **kwargs)


def test_corrupt_copies(slide, tmp_path):
    out = write_corrupt_copies(slide, tmp_path)
    assert out["truncated"].stat().st_size == slide.stat().st_size // 2
    assert out["empty"].stat().st_size == 0
    assert out["text"].suffix == ".svs" and out["text"].read_text().startswith("This is not")
