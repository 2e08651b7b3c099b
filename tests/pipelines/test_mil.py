"""Attention MIL on a small slide store: cached features, training, predictions CSV, attention heatmaps."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch
import zarr

from ingest.synthetic.slide import write_synthetic_slide
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig
from pipelines.data.features import extract_slide_features, features_key
from pipelines.training.mil import FEATURE_EXTRACTORS, MILConfig, infer_mil, sample_bag, train_mil
from pipelines.training.slide_runs import MILError, read_labels
from tests.pipelines.run_helpers import tb_scalars


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


def test_feature_caching_is_one_process_at_a_time_and_atomic(slide_store, tmp_path):
    """A second caller waits on the slide's features lock, then reads what the holder cached instead of computing
    it again (its ``model=object()`` would fail if it were used); no half-written array is left beside it. On a copy
    of the store without features: another test of this module may have cached them already (any order)."""
    import shutil
    import threading

    from pipelines.data.features import _compute_and_cache, features_lock

    store = tmp_path / "tiles.zarr"
    shutil.copytree(slide_store / "tiles.zarr", store, ignore=shutil.ignore_patterns("features", "*.lock"))
    holder = features_lock(store, "s1")
    assert holder.try_acquire()
    got: list = []
    errors: list = []

    def second_caller() -> None:
        try:
            got.append(extract_slide_features(store, "s1", "10x", "resnet34", model=object()))
        except Exception as exc:  # reported below
            errors.append(exc)

    waiter = threading.Thread(target=second_caller)
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not got  # waiting on the lock
    computed = _compute_and_cache(store, "s1", "10x", "resnet34", weights=None, pretrained=False, batch_size=64,
                                  device="cpu", model=None)  # what the holder does
    holder.release()
    waiter.join(timeout=60)
    assert not errors and len(got) == 1
    assert np.array_equal(got[0], computed)
    folder = store / "s1" / "features" / "10x"
    assert sorted(p.name for p in folder.iterdir()) == ["resnet34", "zarr.json"]
    assert not (store / "s1.features.lock").exists()


def test_train_and_infer(slide_store, tmp_path):
    config = MILConfig(store=str(slide_store / "tiles.zarr"), labels=str(slide_store / "labels.csv"), scale="10x",
                       extractor="resnet34", epochs=3, max_patches=8, split=(0.34, 0.33, 0.33),
                       out=str(tmp_path / "run"))
    summary = train_mil(config)
    assert sum(summary["n_slides"].values()) == 6 and summary["classes"] == ["normal", "tumour"]
    raw = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert (raw["format"], raw["version"], raw["kind"]) == ("histo-bench/checkpoint", 1, "mil")
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    curves = tb_scalars(tmp_path / "run" / "tb")
    epochs = [s for s, _ in curves["epoch/val_macro_f1"]]
    assert epochs == list(range(len(epochs))) and {"epoch/train_loss", "epoch/items_per_s"} <= set(curves)
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


def test_extractor_choices_build():
    from models.mil import FEATURE_DIMS, feature_extractor

    assert FEATURE_EXTRACTORS == tuple(FEATURE_DIMS) == ("resnet50", "resnet34", "vit_small")
    x = torch.rand(2, 3, 64, 64)  # tiles smaller than 224: the ViT interpolates its position embedding
    for name in FEATURE_EXTRACTORS:
        model, dim = feature_extractor(name)
        with torch.inference_mode():
            assert model.eval()(x).shape == (2, dim) == (2, FEATURE_DIMS[name])
        MILConfig(store="x", labels="y", extractor=name)
    with pytest.raises(ValueError, match="extractor must be one of resnet50, resnet34, vit_small"):
        MILConfig(store="x", labels="y", extractor="vit")


def test_feature_cache_is_tied_to_the_encoder(slide_store, tmp_path):
    import timm

    store = slide_store / "tiles.zarr"
    random_init = extract_slide_features(store, "s5", "10x", "resnet34")
    torch.manual_seed(123)
    torch.save(timm.create_model("resnet34", num_classes=0).state_dict(), tmp_path / "enc.pt")
    other = extract_slide_features(store, "s5", "10x", "resnet34", weights=str(tmp_path / "enc.pt"))
    assert other.shape == random_init.shape and not np.allclose(other, random_init)
    attrs = zarr.open_group(str(store), mode="r")[features_key("s5", "10x", "resnet34")].attrs
    assert attrs["weights"].startswith("enc.pt sha256:")
    again = extract_slide_features(store, "s5", "10x", "resnet34")  # the seeded random encoder, recomputed
    assert np.array_equal(again, random_init)


def test_sample_bag_keeps_at_most_max_patches():
    bag = np.arange(20, dtype=np.float32).reshape(10, 2)
    rng = random.Random(0)
    sub = sample_bag(bag, 4, rng)
    assert sub.shape == (4, 2) and np.all(np.diff(sub[:, 0]) > 0) and set(sub[:, 0]) <= set(bag[:, 0])
    assert sample_bag(bag, 10, rng) is bag and sample_bag(bag, 50, rng) is bag
    with pytest.raises(ValueError, match="max_patches"):
        MILConfig(store="x", labels="y", max_patches=0)


def test_focal_loss_run_and_ensemble_is_the_mean_of_probabilities(slide_store, tmp_path):
    store, labels = slide_store / "tiles.zarr", slide_store / "labels.csv"
    runs = []
    for seed, loss in ((0, "ce"), (1, "focal")):
        config = MILConfig(store=str(store), labels=str(labels), scale="10x", extractor="resnet34", epochs=2,
                           max_patches=8, split=(0.34, 0.33, 0.33), seed=seed, loss=loss, focal_gamma=2.0,
                           model="abmil" if seed else "abmil_gated", out=str(tmp_path / f"run{seed}"))
        train_mil(config)
        runs.append(tmp_path / f"run{seed}" / "best.pt")
    singles = [list(csv.DictReader(infer_mil([r], store, tmp_path / f"p{i}").open())) for i, r in enumerate(runs)]
    ensemble = list(csv.DictReader(infer_mil(runs, store, tmp_path / "ens", labels=labels).open()))
    assert list(ensemble[0]) == ["slide_id", "label", "predicted", "p_normal", "p_tumour"]
    for row, a, b in zip(ensemble, *singles, strict=True):
        for c in ("p_normal", "p_tumour"):
            assert float(row[c]) == pytest.approx((float(a[c]) + float(b[c])) / 2, abs=2e-6)
        assert row["predicted"] == max(("normal", "tumour"), key=lambda c: float(row[f"p_{c}"]))
        assert row["label"] == ("tumour" if int(row["slide_id"][1:]) % 2 else "normal")
    attn = [np.load(tmp_path / d / "attention" / "s2.npy") for d in ("p0", "p1", "ens")]
    assert np.allclose(attn[2], (attn[0] + attn[1]) / 2, atol=1e-6)
    with pytest.raises(MILError, match="trained with 'resnet34'"):
        infer_mil(runs, store, tmp_path / "bad", extractor="resnet50")
    with pytest.raises(ValueError, match="unknown loss"):
        MILConfig(store="x", labels="y", loss="hinge")


def test_slide_level_folds_and_a_finished_run_is_not_retrained(slide_store, tmp_path):
    import json

    base = dict(store=str(slide_store / "tiles.zarr"), labels=str(slide_store / "labels.csv"), scale="10x",
                extractor="resnet34", epochs=1, max_patches=8, folds=3)
    tests = []
    for fold in range(3):
        summary = train_mil(MILConfig(**base, fold=fold, out=str(tmp_path / f"f{fold}")))
        splits = json.loads((tmp_path / f"f{fold}" / "splits.json").read_text())
        assert summary["n_slides"] == {"train": 2, "val": 2, "test": 2} and "3-fold" in splits["notes"][0]
        assert {int(s[1:]) % 2 for s in splits["test"]} == {0, 1}  # one slide of each label
        assert set(summary["test_predictions"]) == set(splits["test"]) and summary["test"]["n_patients"] == 2
        tests += splits["test"]
    assert sorted(tests) == [f"s{i}" for i in range(6)]  # every slide is tested exactly once
    stamp = (tmp_path / "f0" / "best.pt").stat().st_mtime_ns
    assert train_mil(MILConfig(**base, fold=0, out=str(tmp_path / "f0")))["test"] == summary_of(tmp_path / "f0")
    assert (tmp_path / "f0" / "best.pt").stat().st_mtime_ns == stamp
    # a finished run with other settings is refused, naming them; the old result stays
    from pipelines.training.run_directory import FitError

    with pytest.raises(FitError, match=r"other settings \(lr 0.0002 != 0.001\)"):
        train_mil(MILConfig(**base, fold=0, lr=1e-3, out=str(tmp_path / "f0")))
    assert (tmp_path / "f0" / "best.pt").stat().st_mtime_ns == stamp
    with pytest.raises(MILError, match="7-fold cross-validation needs at least 7 patients"):
        train_mil(MILConfig(**{**base, "folds": 7}, out=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="fold in 0..folds-1"):
        MILConfig(**base, fold=3)


def summary_of(run):
    import json

    return json.loads((run / "summary.json").read_text())["test"]
