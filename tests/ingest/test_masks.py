"""User tissue masks (``histo-ingest tile --masks DIR``): used instead of detection, fallback, clear errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ingest.cli import app
from ingest.slide_store import SlideStore
from ingest.synthetic.slide import write_synthetic_slide
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig
from ingest.tissue import MaskError, load_mask

W, H = 2048, 1536  # 40x; at 10x with 64 px tiles a tile covers 256 level-0 px: a 8 x 6 grid


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    for name, seed in (("a", 1), ("b", 2)):
        write_synthetic_slide(root / f"{name}.tiff", width=W, height=H, seed=seed)
    return root


def _config(masks) -> TileConfig:
    return TileConfig(magnifications=(10,), tile_size=64, tissue_threshold=0.5, masks=str(masks))


def test_load_mask_resizes_and_reads_any_nonzero_as_tissue(tmp_path):
    img = np.zeros((30, 40, 3), np.uint8)
    img[:, :20, 1] = 7  # left half, green channel only
    Image.fromarray(img).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", (60, 80))
    assert mask.shape == (60, 80) and mask[:, :40].all() and not mask[:, 40:].any()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(MaskError, match=r"tissue mask .*bad\.png: cannot read it"):
        load_mask(tmp_path / "bad.png", (60, 80))


def test_left_half_mask_gives_tiles_on_the_left_only(slides, tmp_path, caplog):
    masks = tmp_path / "masks"
    masks.mkdir()
    left = np.zeros((75, 100), np.uint8)  # any size: resized to the thumbnail grid
    left[:, :50] = 255
    Image.fromarray(left).save(masks / "a.png")  # b has no mask: automatic detection
    with caplog.at_level(logging.INFO, logger="ingest.tiling"):
        summary = run_tiling(sorted(slides.glob("*.tiff")), tmp_path / "s.zarr", _config(masks))
    assert [r.status for r in summary.results] == ["done", "done"]
    store = SlideStore(tmp_path / "s.zarr")
    xy = store.coords("a", "10x")
    assert len(xy) == 4 * 6 and xy[:, 0].max() + 256 <= W // 2  # every left tile (the mask is all tissue there)
    assert store.slide("a").attrs["tissue_source"].endswith("a.png")
    assert store.slide("b").attrs["tissue_source"] == "auto"
    assert "b: no tissue mask" in caplog.text and "detecting tissue automatically" in caplog.text


def test_corrupt_mask_fails_its_slide_only_and_the_cli_names_it(slides, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"garbage")
    summary = run_tiling(sorted(slides.glob("*.tiff")), tmp_path / "s.zarr", _config(masks))
    by_id = {r.slide_id: r for r in summary.results}
    assert by_id["a"].status == "failed" and by_id["b"].status == "done"
    error = by_id["a"].error
    assert error.startswith(f"tissue mask {masks / 'a.png'}: cannot read it") and "\n" not in error
    assert summary.count("failed") == 1
    res = CliRunner().invoke(app, ["tile", str(slides), "--out", str(tmp_path / "c.zarr"), "--mag", "10",
                                   "--tile-size", "64", "--masks", str(masks), "--workers", "1"])
    assert res.exit_code == 3, res.output  # written, with a skipped slide
    assert "a.png: cannot read it" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["tile", str(slides), "--out", str(tmp_path / "d.zarr"), "--masks",
                                   str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "no such folder" in res.output
