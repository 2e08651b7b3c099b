"""DICOM whole-slide images: a folder of ``.dcm`` instances is one slide (named after the folder), found by
``find_slides``, routed to OpenSlide and tiled like any other format, end to end through ``histo-ingest tile``.

The real DICOM slide is openslide-python's own test fixture (``boxes_0.dcm`` + ``boxes_1.dcm``, 16 x 16 px,
0.499 µm/px), fetched at install time by ``tests/ingest/dicom_fixtures.py``; without it these tests skip and say so.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from ingest.cli import app
from ingest.readers.base import ReaderError, dicom_instance, open_slide
from ingest.slide_store import SlideStore
from ingest.tiling import find_slides, slide_id_for
from tests.ingest import dicom_fixtures

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
