"""Attention MIL on a small slide store: cached features, training, predictions CSV, attention heatmaps."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import zarr

from ingest.synthetic_wsi import write_synthetic_slide
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig
from pipelines.features import extract_slide_features, features_key
from pipelines.mil import MILConfig, MILError, infer_mil, read_labels, train_mil
from tests.pipelines.test_tracking import tb_scalars


@pytest.fixture(scope="module")
def slide_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mil")
    slides = [write_synthetic_slide(root / f"s{i}.tiff", width=2048, height=1536, seed=i) for i in range(6)]
    run_tiling(slides, root / "tiles.zarr", TileConfig(magnifications=(10,), tile_size=64, tissue_threshold=0.3))
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"s{i},{'tumour' if i % 2 else 'normal'}\n" for i in range(6)))
    return root


def test_features_are_cached_in_the_store(slide_store):
    store = slide_store / "tiles.zarr"
    feats = extract_slide_features(store, "s0", "10x", "resnet34")
    group = zarr.open_group(str(store), mode="r")
    assert feats.shape == (group["s0/tiles/10x"].shape[0], 512)
    cached = group[features_key("s0", "10x", "resnet34")]
    assert cached.dtype == np.float16 and cached.shape == feats.shape
    again = extract_slide_features(store, "s0", "10x", "resnet34", model=object())  # cached: model unused
    assert np.array_equal(again, feats)


def test_train_and_infer(slide_store, tmp_path):
    config = MILConfig(store=str(slide_store / "tiles.zarr"), labels=str(slide_store / "labels.csv"), scale="10x",
                       extractor="resnet34", epochs=3, max_patches=8, split=(0.34, 0.33, 0.33),
                       out=str(tmp_path / "run"))
    summary = train_mil(config)
    assert sum(summary["n_slides"].values()) == 6 and summary["classes"] == ["normal", "tumour"]
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    curves = tb_scalars(tmp_path / "run" / "tb")
    epochs = [s for s, _ in curves["epoch/val_macro_f1"]]
    assert epochs == list(range(len(epochs))) and {"epoch/train_loss", "epoch/slides_per_s"} <= set(curves)
    path = infer_mil([tmp_path / "run" / "best.pt"] * 2, slide_store / "tiles.zarr", tmp_path / "pred", scale="10x",
                     extractor="resnet34")
    rows = list(csv.DictReader(path.open()))
    assert [r["slide_id"] for r in rows] == [f"s{i}" for i in range(6)]
    assert all(abs(float(r["p_normal"]) + float(r["p_tumour"]) - 1) < 1e-5 for r in rows)
    attn = np.load(tmp_path / "pred" / "attention" / "s1.npy")
    assert attn.sum() == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "pred" / "attention" / "s1.png").exists()


def test_label_file_errors(slide_store, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,cls\ns0,a\n")
    with pytest.raises(MILError, match="needs the columns slide_id,label"):
        read_labels(bad, ["s0"])
    bad.write_text("slide_id,label\nghost,a\n")
    with pytest.raises(MILError, match="not in the store: ghost"):
        read_labels(bad, ["s0"])
    with pytest.raises(MILError, match="no such labels file"):
        read_labels(tmp_path / "missing.csv", ["s0"])
    with pytest.raises(ValueError, match="abmil"):
        MILConfig(store="x", labels="y", model="transformer")
