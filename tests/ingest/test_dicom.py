"""DICOM whole-slide images: a folder of ``.dcm`` instances is one slide (named after the folder), found by
``find_slides``, routed to OpenSlide and tiled like any other format, end to end through ``histo-ingest tile``.

The real DICOM slide is openslide-python's own test fixture (``boxes_0.dcm`` + ``boxes_1.dcm``, 16 x 16 px,
0.499 µm/px), fetched at install time by ``tests/ingest/dicom_fixtures.py``; without it these tests skip and say so.
A DICOM WSI of our own (``tests/ingest/dicom_writer.py``: a multi-level JPEG pyramid of synthetic H&E) needs no
fixture: those tests never skip.
"""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ingest.cli import app
from ingest.readers.base import ReaderError, dicom_instance, open_slide
from ingest.slide_store import SlideStore
from ingest.tiling import find_slides, slide_id_for
from tests.ingest import dicom_fixtures
from tests.ingest.dicom_writer import LEVEL0_TYPE, RESAMPLED_TYPE, encode_element, pyramid, write_dicom_wsi

runner = CliRunner()


@pytest.fixture
def dicom_slide(tmp_path):
    """openslide-python's DICOM fixture, copied into a folder named like a case (``cases/case-17/``)."""
    src = dicom_fixtures.present()
    if src is None:
        pytest.skip("openslide-python's DICOM fixtures are not fetched (offline install?): run "
                    "`python tests/ingest/dicom_fixtures.py` once with network access")
    folder = tmp_path / "cases" / "case-17"
    folder.mkdir(parents=True)
    for name in dicom_fixtures.FILES:
        shutil.copy(src / name, folder / name)
    return folder


def test_a_folder_of_dcm_instances_is_one_slide_named_after_it(tmp_path):
    (tmp_path / "a" / "s1").mkdir(parents=True)
    for name in ("i0.dcm", "i1.DCM", ".hidden.dcm"):
        (tmp_path / "a" / "s1" / name).write_bytes(b"")
    (tmp_path / "a" / "other.svs").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_bytes(b"")
    slides = find_slides(tmp_path)
    assert slides == [tmp_path / "a" / "other.svs", tmp_path / "a" / "s1"]
    assert [slide_id_for(p) for p in slides] == ["other", "s1"]
    assert find_slides(tmp_path / "a" / "s1" / "i0.dcm") == [tmp_path / "a" / "s1"]  # one instance: its slide
    assert dicom_instance(tmp_path / "a" / "s1") == tmp_path / "a" / "s1" / "i0.dcm"
    assert dicom_instance(tmp_path / "a") is None


def test_a_folder_without_dcm_files_is_refused_in_one_line(tmp_path):
    with pytest.raises(ReaderError, match="not a DICOM slide"):
        open_slide(tmp_path)


def test_dicom_slide_opens_with_openslide_only(dicom_slide):
    with open_slide(dicom_slide) as reader:
        assert reader.name == "openslide"
        assert reader.dimensions == (16, 16)
        assert reader.mpp == pytest.approx(0.499)
        assert reader.read_region((0, 0), (16, 16)).shape == (16, 16, 3)
    with pytest.raises(ReaderError, match="cannot read DICOM"):
        open_slide(dicom_slide, "tifffile")


def test_histo_ingest_tile_tiles_a_dicom_folder(dicom_slide, tmp_path):
    import openslide

    out = tmp_path / "tiles.zarr"
    res = runner.invoke(app, ["tile", str(dicom_slide.parent), "--out", str(out), "--mag", "20",
                              "--tile-size", "16", "--tissue-threshold", "0"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    store = SlideStore(out)
    assert store.slide_ids() == ["case-17"]
    info = store.slide("case-17")
    assert info.attrs["reader"] == "openslide"
    tiles = store.tiles("case-17", "20x")
    assert tiles.shape == (1, 16, 16, 3)
    slide = openslide.OpenSlide(str(dicom_slide / "boxes_0.dcm"))
    expected = np.asarray(slide.read_region((0, 0), 0, (16, 16)).convert("RGB"))
    assert np.array_equal(tiles[0], expected)


# --- a DICOM WSI written here (tests/ingest/dicom_writer.py): no fixture, no network, never skips -------------

def _he_image(width: int, height: int, seed: int) -> np.ndarray:
    """Seeded synthetic H&E (tissue islands with nuclei on white glass), the pixels the synthetic slides hold."""
    from ingest.synthetic.slide import render_level_region

    return render_level_region(0, 0, width, height, width=width, height=height, seed=seed)


def test_the_dicom_writer_encodes_elements_by_the_explicit_vr_rules():
    assert encode_element(0x00080060, "CS", "SM") == b"\x08\x00\x60\x00CS\x02\x00SM"
    assert encode_element(0x00200013, "IS", 1) == b"\x20\x00\x13\x00IS\x02\x001 "  # odd: padded with a space
    assert encode_element(0x00080016, "UI", "1.2.3") == b"\x08\x00\x16\x00UI\x06\x001.2.3\x00"  # UI: with a NUL
    assert encode_element(0x00080008, "CS", ["A", "BC"]) == b"\x08\x00\x08\x00CS\x04\x00A\\BC"  # multi-valued
    assert encode_element(0x00280010, "US", 256) == b"\x28\x00\x10\x00US\x02\x00\x00\x01"
    assert encode_element(0x00209165, "AT", 0x0048021F) == b"\x20\x00\x65\x91AT\x04\x00\x48\x00\x1f\x02"
    # OB, UT, SQ...: two reserved bytes and a 4-byte length
    assert encode_element(0x00282000, "OB", b"abc") == b"\x28\x00\x00\x20OB\x00\x00\x04\x00\x00\x00abc\x00"
    assert encode_element(0x00204000, "UT", "x") == b"\x20\x00\x00\x40UT\x00\x00\x02\x00\x00\x00x "
    item = [(0x00480106, "SH", "1 ")]  # 10 bytes: (0048,0106) SH, length 2
    assert encode_element(0x00480105, "SQ", [item]) == (
        b"\x48\x00\x05\x01SQ\x00\x00\x12\x00\x00\x00" + b"\xfe\xff\x00\xe0\x0a\x00\x00\x00"
        + b"\x48\x00\x06\x01SH\x02\x001 ")
    assert encode_element(0x00480105, "SQ", [item], undefined_lengths=True) == (
        b"\x48\x00\x05\x01SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        + b"\x48\x00\x06\x01SH\x02\x001 " + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")


@pytest.mark.parametrize("undefined_lengths", [False, True], ids=["defined-lengths", "undefined-lengths"])
def test_a_dicom_wsi_we_write_opens_in_openslide_as_a_pyramid(tmp_path, undefined_lengths):
    import openslide

    rgb = _he_image(700, 600, seed=1)
    files = write_dicom_wsi(rgb, tmp_path / "slide", tile=128, mpp=0.25, objective_power=40,
                            undefined_lengths=undefined_lengths)
    dims = ((700, 600), (350, 300), (175, 150), (88, 75))  # halved until a level fits one 128 px tile
    assert [p.name for p in files] == [f"level-{i}.dcm" for i in range(len(dims))]
    data = files[0].read_bytes()
    assert data[:128] == bytes(128) and data[128:132] == b"DICM"
    meta_length = struct.unpack_from("<I", data, 140)[0]  # (0002,0000) UL: the rest of group 2, in bytes
    assert data[144 + meta_length:150 + meta_length] == b"\x08\x00\x08\x00CS"  # then (0008,0008) ImageType
    for start in (files[0], files[-1]):  # any instance opens the whole series
        with openslide.OpenSlide(str(start)) as slide:
            assert slide.properties["openslide.vendor"] == "dicom"
            assert slide.level_count == len(files)
            assert slide.level_dimensions == dims
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
            assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
            assert float(slide.properties["openslide.objective-power"]) == 40
            assert slide.properties["openslide.level[1].tile-width"] == "128"
            assert [slide.properties[f"dicom.ImageType[{i}]"] for i in range(4)] == list(LEVEL0_TYPE)
            levels = [np.asarray(slide.read_region((0, 0), i, d).convert("RGB")).astype(int)
                      for i, d in enumerate(dims)]
    (tmp_path / "alone").mkdir()  # a resampled level opened on its own: its own data set
    with openslide.OpenSlide(str(shutil.copy(files[1], tmp_path / "alone"))) as alone:
        assert alone.level_dimensions == dims[1:2]
        assert [alone.properties[f"dicom.ImageType[{i}]"] for i in range(4)] == list(RESAMPLED_TYPE)
    for level, written in zip(levels, pyramid(rgb, 128), strict=True):  # JPEG q90: close, not equal
        assert np.abs(level - written).mean() < 4
    assert np.abs(levels[0] - rgb).mean() < 4
    assert np.abs(levels[0][-88:, -60:] - rgb[-88:, -60:]).mean() < 4  # the padded corner tile too


def test_histo_ingest_tile_tiles_a_dicom_wsi_we_wrote(tmp_path):
    import openslide

    rgb = _he_image(1100, 900, seed=3)  # not a multiple of the 256 px tiles: partial edge tiles
    folder = tmp_path / "cases" / "case-3"
    files = write_dicom_wsi(rgb, folder, tile=256, mpp=0.5)  # no objective power: 0.5 µm/px is 20x (mpp x mag = 10)
    out = tmp_path / "tiles.zarr"
    res = runner.invoke(app, ["tile", str(folder.parent), "--out", str(out), "--mag", "20", "--mag", "10",
                              "--tile-size", "256", "--tissue-threshold", "0"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    store = SlideStore(out)
    assert store.slide_ids() == ["case-3"]
    attrs = store.slide("case-3").attrs
    assert attrs["reader"] == "openslide"
    assert attrs["mpp"] == pytest.approx(0.5) and attrs["objective_power"] is None
    with openslide.OpenSlide(str(files[0])) as slide:
        # 20x reads level 0 (4 x 3 whole tiles of 1100 x 900), 10x level 1 (2 x 1 whole tiles of 550 x 450)
        for scale, level, n in (("20x", 0, 12), ("10x", 1, 2)):
            tiles, coords = store.tiles("case-3", scale), store.coords("case-3", scale)
            assert tiles.shape == (n, 256, 256, 3)
            assert len(coords) == n
            for tile, (x, y) in zip(tiles, coords.tolist(), strict=True):
                expected = np.asarray(slide.read_region((x, y), level, (256, 256)).convert("RGB"))
                assert np.array_equal(tile, expected), (scale, x, y)
                side0 = 256 << level  # the tile's side in level-0 pixels
                src = Image.fromarray(rgb[y:y + side0, x:x + side0]).reduce(1 << level)
                assert np.abs(tile.astype(int) - np.asarray(src)).mean() < 4, (scale, x, y)
