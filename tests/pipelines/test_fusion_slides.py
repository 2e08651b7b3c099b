"""The fusion model on concentric tile views from a slide store."""

from __future__ import annotations

import json

import pytest

from ingest.synthetic.slide import write_synthetic_slide
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig
from pipelines.training.checkpoint import load_checkpoint
from pipelines.training.slide_fusion import SlideFusionConfig, train_slide_fusion
from pipelines.training.slide_runs import MILError
from tests.pipelines.run_helpers import tb_scalars


@pytest.fixture(scope="module")
def multiscale_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    slides = [write_synthetic_slide(root / f"s{i}.tiff", width=2048, height=1536, seed=i,
                                    classes=["adenosis"] if i % 2 else ["ductal_carcinoma"]) for i in range(6)]
    run_tiling(slides, root / "tiles.zarr", TileConfig(magnifications=(10,), tile_size=32, tissue_threshold=0.3,
                                                         multiscale=True))
    run_tiling(slides[:3], root / "flat.zarr", TileConfig(magnifications=(10,), tile_size=32))
    (root / "labels.csv").write_text("slide_id,label\n" + "".join(
        f"s{i},{'benign' if i % 2 else 'malignant'}\n" for i in range(6)))
    return root


def test_trains_on_concentric_views(multiscale_store, tmp_path):
    config = SlideFusionConfig(store=str(multiscale_store / "tiles.zarr"), labels=str(multiscale_store / "labels.csv"),
                               scale="10x", epochs=2, batch_size=8, max_tiles=12, split=(0.34, 0.33, 0.33),
                               out=str(tmp_path / "run"))
    summary = train_slide_fusion(config)
    assert summary["n_inputs"] == 4 and sum(summary["n_slides"].values()) == 6
    assert summary["n_tiles"]["train"] <= 2 * 12
    assert 0 <= summary["test_slide"]["accuracy"] <= 1 and summary["test_tile"]["n_images"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    best = load_checkpoint(tmp_path / "run" / "best.pt", ("slide_fusion",))
    assert best.model_kwargs == {"n_inputs": 4} and best.epoch in (0, 1)
    curves = tb_scalars(tmp_path / "run" / "tb")
    assert [s for s, _ in curves["epoch/val_slide_macro_f1"]] == [0, 1] and "epoch/items_per_s" in curves


def test_store_without_concentric_views_is_a_clear_error(multiscale_store, tmp_path):
    (tmp_path / "labels.csv").write_text("slide_id,label\ns0,a\ns1,b\ns2,a\n")
    config = SlideFusionConfig(store=str(multiscale_store / "flat.zarr"), labels=str(tmp_path / "labels.csv"),
                               scale="10x", out=str(tmp_path / "run"))
    with pytest.raises(MILError, match="has no concentric views at 10x; tile with `histo-ingest tile --multiscale`"):
        train_slide_fusion(config)
    (tmp_path / "labels.csv").write_text("slide_id,label\ns0,a\n")
    with pytest.raises(MILError, match="need at least 3"):
        train_slide_fusion(config)
    labels = multiscale_store / "labels.csv"
    with pytest.raises(MILError, match="not in the store"):
        train_slide_fusion(SlideFusionConfig(store=str(multiscale_store / "flat.zarr"), labels=str(labels),
                                             scale="10x", out=str(tmp_path / "run")))
