"""Slide readers: metadata, parity between backends and with the pre-JPEG source, batching, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest.readers import READERS, ReaderError, available_readers, open_slide
from ingest.synthetic.slide import render_level_region, write_corrupt_copies, write_synthetic_slide

REAL_SVS = Path(__file__).resolve().parents[3] / "shared/data/wsi/cmu-1-small-region.svs"
W, H, LEVELS, SEED = 2048, 1536, (1, 4, 16), 5
READER_NAMES = ["cucim", "openslide", "tifffile"]
#: (xy at level 0, size, level): inside, straddling the bottom-right corner, straddling the top-left corner.
REGIONS = [((640, 384), (256, 256), 0), ((1900, 1400), (256, 256), 0), ((-96, -64), (200, 160), 0),
           ((512, 256), (128, 96), 1), ((1024, 768), (100, 80), 1), ((-256, 512), (64, 64), 2)]


def reader_param(name: str):
    why = READERS.get(name).unavailable()
    return pytest.param(name, marks=pytest.mark.skipif(why is not None, reason=str(why)), id=name)


ALL = [reader_param(n) for n in READER_NAMES]


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "slide.tif", width=W, height=H, levels=LEVELS,
                                 seed=SEED)


@pytest.fixture(scope="module")
def corrupt(slide, tmp_path_factory) -> dict[str, Path]:
    return write_corrupt_copies(slide, tmp_path_factory.mktemp("bad"))


def source(xy, size, level) -> np.ndarray:
    """The pre-JPEG pixels of a region, white outside the slide."""
    d = LEVELS[level]
    lw, lh = W // d, H // d
    lx, ly = xy[0] // d, xy[1] // d
    out = np.full((size[1], size[0], 3), 255, np.uint8)
    x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + size[0], lw), min(ly + size[1], lh)
    out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = render_level_region(x0, y0, x1 - x0, y1 - y0, width=W, height=H,
                                                                downsample=d, levels=LEVELS, seed=SEED)
    return out


def test_registry_order():
    assert READERS.get("cucim").priority < READERS.get("openslide").priority < READERS.get("tifffile").priority
    assert set(READER_NAMES) <= set(READERS.names())
    assert "tifffile" in available_readers()


@pytest.mark.parametrize("name", ALL)
def test_opens_synthetic_slide(slide, name):
    with open_slide(slide, name) as s:
        assert s.name == name
        assert [(lv.width, lv.height) for lv in s.levels] == [(W // d, H // d) for d in LEVELS]
        assert [lv.downsample for lv in s.levels] == pytest.approx([float(d) for d in LEVELS])
        assert s.mpp == pytest.approx(0.25) and s.objective_power == pytest.approx(40)
        assert s.dimensions == (W, H)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("xy,size,level", REGIONS)
def test_region_matches_source(slide, name, xy, size, level):
    with open_slide(slide, name) as s:
        region = s.read_region(xy, size, level)
    assert region.shape == (size[1], size[0], 3) and region.dtype == np.uint8 and region.flags.c_contiguous
    diff = np.abs(region.astype(np.int16) - source(xy, size, level))
    # JPEG q90 4:2:0; reduced levels are busier (measured mean <= ~4, p99 <= ~30)
    assert diff.mean() < 5 and np.percentile(diff, 99) < 40, (diff.mean(), np.percentile(diff, 99))
    # out-of-slide pixels are exactly white
    d = LEVELS[level]
    lx, ly = xy[0] // d, xy[1] // d
    outside = np.ones((size[1], size[0]), bool)
    outside[max(0, -ly):max(0, H // d - ly), max(0, -lx):max(0, W // d - lx)] = False
    assert (region[outside] == 255).all()


@pytest.mark.parametrize("xy,size,level", REGIONS)
def test_reader_parity(slide, xy, size, level):
    names = [n for n in available_readers() if n in READER_NAMES]
    regions = {}
    for n in names:
        with open_slide(slide, n) as s:
            regions[n] = s.read_region(xy, size, level).astype(np.int16)
    ref = regions[names[-1]]
    for n in names:
        diff = np.abs(regions[n] - ref)
        # measured: identical (all backends decode the same JPEG tiles with libjpeg-turbo)
        assert diff.mean() < 1 and diff.max() <= 16, (n, diff.mean(), diff.max())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("level", [0, 1])
def test_batched_equals_single(slide, name, level):
    rng = np.random.default_rng(0)
    xys = [(int(x), int(y)) for x, y in zip(rng.integers(-100, W, 23), rng.integers(-100, H, 23), strict=True)]
    with open_slide(slide, name) as s:
        single = [s.read_region(xy, (96, 64), level) for xy in xys]
        for workers in (1, 3):
            batched = list(s.read_regions(xys, (96, 64), level, num_workers=workers))
            assert len(batched) == len(xys)
            for a, b in zip(batched, single, strict=True):
                assert a.shape == (64, 96, 3) and np.array_equal(a, b)
        assert list(s.read_regions([], (96, 64), level, num_workers=2)) == []


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_corrupt_inputs(corrupt, name, kind):
    path = corrupt[kind]
    with pytest.raises(ReaderError) as info:
        READERS.get(name)(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg) > len(str(path)) + 4


def test_auto_on_truncated_lists_reasons(corrupt, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(ReaderError) as info:
        open_slide(corrupt["truncated"])
    msg = str(info.value)
    assert msg.startswith(f"{corrupt['truncated']}: no reader could open it")
    for n in available_readers():
        assert f"{n}: " in msg


def test_missing_file(tmp_path):
    with pytest.raises(ReaderError, match="no such file"):
        open_slide(tmp_path / "nope.svs")


def test_plain_png_opens_as_one_level(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "plain.png")
    Image.fromarray(img).save(tmp_path / "plain.bmp")
    Image.fromarray(img).save(tmp_path / "plain.tif")  # striped, uncompressed: tifffile reads it directly
    for p in ("plain.png", "plain.bmp", "plain.tif"):
        with open_slide(tmp_path / p) as s:
            assert [(lv.width, lv.height, lv.downsample) for lv in s.levels] == [(200, 120, 1.0)]
            assert s.mpp is None and s.objective_power is None
            assert np.array_equal(s.read_region((0, 0), (200, 120)), img)
            edge = s.read_region((150, 100), (100, 40))
            assert np.array_equal(edge[:20, :50], img[100:, 150:]) and (edge[20:] == 255).all()


def test_png_with_alpha_and_dpi(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png", dpi=(50800, 50800))  # 0.5 µm/px
    with READERS.get("tifffile")(tmp_path / "a.png") as s:
        region = s.read_region((0, 0), (10, 10))
        assert (region[:5] == [200, 0, 0]).all() and (region[5:] == 255).all()
        assert s.mpp == pytest.approx(0.5, rel=1e-3)


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match="t.png"):
        open_slide(tmp_path / "t.png")


@pytest.mark.skipif(not REAL_SVS.exists(), reason=f"{REAL_SVS} not present")
@pytest.mark.parametrize("name", ALL)
def test_real_aperio_slide(name):
    with open_slide(REAL_SVS, name) as s:
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499) and s.objective_power == pytest.approx(20)
        region = s.read_region((1000, 1200), (300, 200))
        assert region.shape == (200, 300, 3) and region.std() > 5  # tissue, not blank


@pytest.mark.skipif(not REAL_SVS.exists(), reason=f"{REAL_SVS} not present")
def test_real_aperio_parity():
    names = [n for n in available_readers() if n in READER_NAMES]
    regions = []
    for n in names:
        with open_slide(REAL_SVS, n) as s:
            regions.append(s.read_region((2100, 2800), (240, 240)).astype(np.int16))  # crosses the corner
    for r in regions[1:]:
        diff = np.abs(r - regions[0])
        assert diff.mean() < 1 and diff.max() <= 16
