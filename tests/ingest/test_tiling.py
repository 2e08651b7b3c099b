"""End-to-end tiling on synthetic pyramidal TIFFs (and the real Aperio slide when present)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from ingest.readers.base import open_slide
from ingest.slide_store import SlideStore, slide_status
from ingest.synthetic.slide import synthetic_tissue_mask, write_corrupt_copies, write_synthetic_slide
from ingest.tile_runner import TileRunError, run_tiling
from ingest.tiling import TileConfig, find_slides, tile_slide
from ingest.tissue import tile_fractions
from tests.conftest import REAL_SVS

W, H = 4096, 3072  # 40x, 0.25 µm/px, levels 1/4/16


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "synthetic.tiff", width=W, height=H, seed=3)


def test_tile_counts_coordinates_and_pixels(slide, tmp_path):
    config = TileConfig(magnifications=(40, 10), tile_size=224, tissue_threshold=0.0)
    res = tile_slide(slide, tmp_path / "s.zarr", config)
    assert res.status == "done", res.error
    # hand-computed grid: 40x -> 224 px tiles at level 0: 18 x 13; 10x -> 896 level-0 px: 4 x 3
    assert res.tiles == {"40x": 18 * 13, "10x": 4 * 3}
    store = SlideStore(tmp_path / "s.zarr")
    xy = store.coords("synthetic", "40x")
    assert xy[0].tolist() == [0, 0] and xy[1].tolist() == [224, 0] and xy[18].tolist() == [0, 224]
    assert xy[-1].tolist() == [17 * 224, 12 * 224]
    assert store.coords("synthetic", "10x")[-1].tolist() == [3 * 896, 2 * 896]
    attrs = store.slide("synthetic").attrs
    assert attrs["scales"]["10x"]["level"] == 1 and attrs["mpp"] == 0.25 and attrs["objective_power"] == 40
    with open_slide(slide, res.reader) as reader:  # stored pixels == a direct read of the same region
        assert np.array_equal(store.tiles("synthetic", "40x", 20), reader.read_region(tuple(xy[20]), (224, 224), 0))
        xy10 = store.coords("synthetic", "10x")[5]
        assert np.array_equal(store.tiles("synthetic", "10x", 5), reader.read_region(tuple(xy10), (224, 224), 1))


def test_tissue_threshold_keeps_tissue_tiles_only(slide, tmp_path):
    config = TileConfig(magnifications=(40,), tile_size=224, tissue_threshold=0.5)
    res = tile_slide(slide, tmp_path / "s.zarr", config, overlay_dir=tmp_path / "ov")
    store = SlideStore(tmp_path / "s.zarr")
    assert store.tissue("synthetic", "40x").min() >= 0.5
    # against the generator's ground truth: the islands hold H&E fields that themselves show glass (lumens, gaps,
    # mucin), so detection keeps a subset of the truth tiles; it must not invent tissue on the glass around them
    truth = synthetic_tissue_mask(W, H, downsample=16, seed=3)
    xy = store.coords("synthetic", "40x")
    truth_frac = tile_fractions(truth, 16, xy[:, 0], xy[:, 1], 224)
    assert truth_frac.min() >= 0.3  # precision: every kept tile is mostly inside an island
    xs, ys = np.meshgrid(np.arange(18) * 224, np.arange(13) * 224)
    expected = int((tile_fractions(truth, 16, xs.ravel(), ys.ravel(), 224) >= 0.5).sum())
    assert 0.7 * expected <= res.tiles["40x"] <= expected + 3  # recall, allowing for the glass inside fields
    overlay = Image.open(tmp_path / "ov" / "synthetic.png")
    assert max(overlay.size) <= 2048 and overlay.mode == "RGB"


def test_multiscale_concentric_fields(slide, tmp_path):
    config = TileConfig(magnifications=(10,), tile_size=64, tissue_threshold=0.5, multiscale=True)
    res = tile_slide(slide, tmp_path / "s.zarr", config)
    store = SlideStore(tmp_path / "s.zarr")
    views = store.multiscale("synthetic", "10x")
    assert views.shape == (res.tiles["10x"], 4, 64, 64, 3)
    assert np.array_equal(views[:, 0], store.tiles("synthetic", "10x"))  # the 1x field is the tile itself
    # the 2x field's centre half, shrunk, shows the same tissue as the tile
    centre = views[0, 1, 16:48, 16:48].astype(float)
    small = np.asarray(Image.fromarray(views[0, 0]).resize((32, 32), Image.Resampling.BOX)).astype(float)
    assert np.abs(centre - small).mean() < 12


@pytest.fixture
def slide_dir(slide, tmp_path):
    """A folder of good, broken and odd slides, with awkward names."""
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy(slide, d / "good one é.tiff")
    write_synthetic_slide(d / "blank.tiff", width=1024, height=1024, seed=1, tissue="none")
    broken = write_corrupt_copies(slide, d)
    Image.fromarray(np.asarray(open_slide(slide).thumbnail(512))).save(d / "photo.png")
    (d / "notes.txt").write_text("not a slide, not even looked at")
    return d, broken


def test_bad_slides_are_reported_and_the_rest_completes(slide_dir, tmp_path):
    d, broken = slide_dir
    paths = find_slides(d)
    assert {p.name for p in paths} == {"good one é.tiff", "blank.tiff", "photo.png",
                                      *(p.name for p in broken.values())}
    summary = run_tiling(paths, tmp_path / "s.zarr", TileConfig(magnifications=(10,)), workers=2)
    by_name = {r.slide_id: r for r in summary.results}
    assert by_name["good one é"].status == "done" and by_name["good one é"].tiles["10x"] > 0
    assert by_name["blank"].status == "empty"
    assert by_name["photo"].status == "failed"
    assert "pass --base-mag or --base-mpp" in by_name["photo"].error
    for p in broken.values():
        r = by_name[p.stem]
        assert r.status == "failed" and r.error and "\n" not in r.error, r
    assert summary.count("failed") == 4 and summary.tiles == by_name["good one é"].tiles["10x"]
    assert SlideStore(tmp_path / "s.zarr").slide_ids() == ["blank", "good one é"]


def test_base_magnification_stands_in_for_missing_metadata(slide_dir, tmp_path):
    d, _ = slide_dir
    res = tile_slide(d / "photo.png", tmp_path / "s.zarr",
                     TileConfig(magnifications=(5,), base_magnification=10, tile_size=32, tissue_threshold=0.2))
    assert res.status == "done" and res.tiles["5x"] > 0


def test_interrupted_slide_is_redone_and_finished_ones_skipped(slide, tmp_path):
    config = TileConfig(magnifications=(40,), tile_size=224, tissue_threshold=0.0, batch_size=16)

    def interrupt(sid, done, total):
        if done >= 32:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tile_slide(slide, tmp_path / "s.zarr", config, progress=interrupt)
    assert slide_status(tmp_path / "s.zarr", "synthetic") == "partial"
    assert SlideStore(tmp_path / "s.zarr").slide_ids() == []  # never half-counted
    assert tile_slide(slide, tmp_path / "s.zarr", config).status == "done"
    assert SlideStore(tmp_path / "s.zarr").partial_ids() == []
    assert tile_slide(slide, tmp_path / "s.zarr", config).status == "skipped"


def test_run_errors(tmp_path, slide):
    with pytest.raises(TileRunError, match="no slides"):
        run_tiling([], tmp_path / "s.zarr", TileConfig())
    (tmp_path / "file").write_text("x")
    with pytest.raises(TileRunError, match="cannot write"):
        run_tiling([slide], tmp_path / "file" / "s.zarr", TileConfig())
    with pytest.raises(ValueError, match="tissue_threshold"):
        TileConfig(tissue_threshold=2)


def test_dask_local_cluster_on_loopback(slide, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1",
                                  protocol="tcp://", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        summary = run_tiling([slide], tmp_path / "s.zarr", TileConfig(magnifications=(10,)),
                             scheduler=cluster.scheduler_address)
    assert [r.status for r in summary.results] == ["done"]
    assert SlideStore(tmp_path / "s.zarr").slide_ids() == ["synthetic"]


def test_unreachable_scheduler_is_a_clear_error(slide, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr("ingest.tile_runner.SCHEDULER_TIMEOUT", "1s")
    with pytest.raises(TileRunError, match="cannot reach the Dask scheduler"):
        run_tiling([slide], tmp_path / "s.zarr", TileConfig(), scheduler="tcp://127.0.0.1:1")


def test_real_aperio_slide(tmp_path):
    if not REAL_SVS.exists():
        pytest.skip(f"real slide not present at {REAL_SVS}")
    res = tile_slide(REAL_SVS, tmp_path / "s.zarr", TileConfig(magnifications=(20, 5), tissue_threshold=0.0))
    assert res.status == "done" and res.mpp == pytest.approx(0.499) and res.objective_power == 20
    assert res.tiles == {"20x": (2220 // 224) * (2967 // 224), "5x": 2 * 3}  # 9 x 13 and 2 x 3
    res = tile_slide(REAL_SVS, tmp_path / "t.zarr", TileConfig(magnifications=(20,), tissue_threshold=0.5))
    assert 20 < res.tiles["20x"] < 117  # tissue is a band through the middle of the slide


def test_resize_batch_block_mean_and_box_filter():
    from ingest.tiling import resize_batch

    batch = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    out = resize_batch(batch, 4)
    expected = batch.reshape(3, 4, 2, 4, 2, 3).astype(float).mean(axis=(2, 4))
    assert out.shape == (3, 4, 4, 3) and np.abs(out - expected).max() <= 0.5 + 1e-9
    assert resize_batch(batch, 8) is batch
    assert resize_batch(batch, 5).shape == (3, 5, 5, 3)
