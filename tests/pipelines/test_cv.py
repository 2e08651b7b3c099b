"""Patient-level k-fold cross-validation: folds, per-fold splits, the store view, a fold's training run, unfreezing,
and the mean ± std aggregation of the suites."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.suites.tables import aggregate, format_cell, mean_std_matrix, mean_std_table, summarize
from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.breakhis_names import CLASSES, relative_path
from ingest.splits import SPLIT_CODES, SplitError
from ingest.store import ImageStore
from pipelines.data.tasks import task_labels
from pipelines.training.cv import (
    CVError,
    classes_missing_from_test,
    fold_splits,
    patient_folds,
    split_view,
    store_for_run,
)
from tests.pipelines.tiny_models import TinyCNN  # noqa: F401  (registers tiny_cnn_test)

PATIENTS = {CLASSES[0]: 5, CLASSES[1]: 6, CLASSES[4]: 7, CLASSES[5]: 5}  # 2 benign + 2 malignant classes


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """4 classes with 5-7 patients each, 2 images at 100X and 400X, colour-coded by class (learnable)."""
    root = tmp_path_factory.mktemp("cv")
    rng = np.random.default_rng(0)
    for c, (cls, n) in enumerate(PATIENTS.items()):
        for p in range(n):
            for mag in ("100X", "400X"):
                for k in (1, 2):
                    path = root / "tree" / relative_path(cls, f"14-{200 + 10 * c + p}", mag, k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    img = np.clip(40 + 50 * c + rng.normal(0, 20, (40, 60, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(img).save(path)
    ingest_breakhis(IngestConfig(root=str(root / "tree"), out=str(root / "s.zarr"), workers=1))
    return ImageStore(root / "s.zarr")


@pytest.mark.parametrize("task", ["subtype", "binary"])
def test_folds_are_patient_grouped_stratified_and_cover_everyone_once(store, task):
    folds = patient_folds(store, 5, seed=0, task=task)
    assert set(folds) == set(store.patient.tolist()) and set(folds.values()) == set(range(5))
    labels, _ = task_labels(store, task)
    label_of = {p: int(lab) for p, lab in zip(store.patient.tolist(), labels.tolist(), strict=True)}
    for lab in set(label_of.values()):  # stratified: each class's patients spread evenly over the folds
        counts = Counter(f for p, f in folds.items() if label_of[p] == lab)
        assert max(counts.values()) - min(counts.get(k, 0) for k in range(5)) <= 1
    sizes = Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1  # the deal continues across classes
    tested = []
    for k in range(5):
        codes = fold_splits(store, 5, k, seed=0, task=task)
        per_split = {s: set(store.patient[codes == c].tolist()) for s, c in SPLIT_CODES.items() if c >= 0}
        assert not (per_split["train"] & per_split["val"] or per_split["train"] & per_split["test"]
                    or per_split["val"] & per_split["test"])
        assert per_split["test"] == {p for p, f in folds.items() if f == k}
        assert per_split["val"] and per_split["train"] and (codes >= 0).all()
        for lab in set(label_of.values()):  # every class has validation patients
            assert any(label_of[p] == lab for p in per_split["val"])
        tested += sorted(per_split["test"])
    assert sorted(tested) == sorted(folds)  # every patient is a test patient exactly once


def test_folds_are_deterministic_by_seed(store):
    assert patient_folds(store, 3, seed=4) == patient_folds(store, 3, seed=4)
    assert patient_folds(store, 3, seed=4) != patient_folds(store, 3, seed=5)
    assert (fold_splits(store, 3, 1, seed=4) == fold_splits(store, 3, 1, seed=4)).all()


def test_a_class_with_fewer_patients_than_folds_is_reported_not_split(store, caplog):
    with caplog.at_level("WARNING", logger="pipelines.training.cv"):
        folds = patient_folds(store, 6, seed=0)
    assert "adenosis has 5 patient(s)" in caplog.text
    assert len(folds) == len(set(store.patient.tolist()))  # every patient in exactly one fold, none split
    gaps = classes_missing_from_test(store, 6, seed=0)
    assert set(gaps) >= {"adenosis"} and all(len(f) >= 1 for f in gaps.values())
    assert classes_missing_from_test(store, 3, seed=0) == {}
    with pytest.raises(CVError, match="needs at least 1000 patients"):
        patient_folds(store, 1000)
    with pytest.raises(CVError, match="folds >= 2"):
        patient_folds(store, 1)
    with pytest.raises(CVError, match="fold must be in 0..2"):
        fold_splits(store, 3, 3)


def test_with_splits_view_and_its_disjointness_check(store):
    codes = fold_splits(store, 5, 2, seed=0)
    view = split_view(store, 5, 2, 0)
    assert (view.split == codes).all() and (store.split != codes).any()  # the store itself is untouched
    assert (view.select(split="test") == np.flatnonzero(codes == 2)).all()
    assert view.attrs["split"]["description"].startswith("patient-level 5-fold")
    assert split_view(store, 0) is store
    bad = codes.copy()
    first = np.flatnonzero(store.patient == store.patient[0])
    bad[first[0]] = 0 if bad[first[1]] != 0 else 1
    with pytest.raises(SplitError, match="cross splits"):
        store.with_splits(bad)


def test_a_fold_run_trains_on_its_fold_and_records_it(store, tmp_path):
    from pipelines.training.classifier import TrainConfig, train

    config = TrainConfig(model="tiny_cnn_test", store=str(store.path), train_magnification="mixed", epochs=1,
                         batch_size=8, image_size=32, load_size=40, loader="device", device="cpu", folds=5, fold=3,
                         split_seed=1, max_steps_per_epoch=2, out=str(tmp_path / "run"))
    result = train(config)
    splits = json.loads((result.run_dir / "splits.json").read_text())
    folds = patient_folds(store, 5, seed=1)
    assert set(splits["test"]["patients"]) == {p for p, f in folds.items() if f == 3}
    assert not set(splits["train"]["patients"]) & set(splits["test"]["patients"])
    assert splits["folds"] == 5 and splits["fold"] == 3 and "fold 3" in splits["split"]
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert (store_for_run(saved).split == fold_splits(store, 5, 3, seed=1)).all()  # evaluation sees the same fold
    with pytest.raises(ValueError, match="fold in 0..folds-1"):
        TrainConfig(folds=5, fold=5)
    with pytest.raises(ValueError, match="folds must be 0"):
        TrainConfig(folds=1)


def test_frozen_parameters_do_not_change(store, tmp_path):
    from histo_bench.seeding import seed_everything
    from pipelines.training.checkpoint import load_model
    from pipelines.training.classifier import TrainConfig, train
    from pipelines.training.unfreeze import trainable_prefixes

    config = TrainConfig(model="resnet50", store=str(store.path), train_magnification="100X", epochs=1,
                         batch_size=4, image_size=32, load_size=36, loader="device", device="cpu", lr=1e-2,
                         unfreeze="last_block", max_steps_per_epoch=2, warmup_epochs=0, task="binary",
                         out=str(tmp_path / "frozen"))
    train(config)
    seed_everything(config.seed)  # train() builds the model right after seeding: the same initial weights
    from models.registry import build_model

    initial = build_model("resnet50", 2).state_dict()
    trained = load_model(tmp_path / "frozen" / "best.pt")[0].state_dict()
    prefixes = trainable_prefixes("resnet50", "last_block")
    params = {n for n, _ in build_model("resnet50", 2).named_parameters()}
    for name in params:
        same = torch.equal(initial[name], trained[name])
        assert same != name.startswith(prefixes), name
    # the frozen layers' BatchNorm statistics do not follow the training data either (linear evaluation)
    stats = [n for n in initial if n.endswith(("running_mean", "running_var"))]
    for name in stats:
        assert torch.equal(initial[name], trained[name]) != name.startswith(prefixes), name
    with pytest.raises(ValueError, match="can only train with --unfreeze full"):
        trainable_prefixes("tiny_cnn_test", "head")
    with pytest.raises(ValueError, match="unknown unfreeze schedule"):
        TrainConfig(unfreeze="middle")


def test_mean_std_aggregation_numbers():
    rows = [{"model": "a", "fold": 0, "seed": 0, "f1": 0.5, "n_patients": 3, "n_images": 30},
            {"model": "a", "fold": 0, "seed": 1, "f1": 0.7, "n_patients": 3, "n_images": 30},
            {"model": "a", "fold": 1, "seed": 0, "f1": 0.9, "n_patients": 4, "n_images": 41},
            {"model": "b", "fold": 0, "seed": 0, "f1": 0.25, "n_patients": 3, "n_images": 30}]
    s = summarize(rows[:3], "f1")
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(0.2)  # sample std of 0.5, 0.7, 0.9
    assert (s["n_runs"], s["n_patients"], s["n_images"]) == (3, 7, 71)  # seeds repeat a fold's test set
    assert format_cell(s) == "0.700 ± 0.200 (n=3; 7 p / 71 i)"
    assert format_cell(summarize(rows[3:], "f1")) == "0.250 ± n/a (n=1; 3 p / 30 i)"
    agg = aggregate(rows, ["model"], "f1")
    assert [(a["model"], a["n_runs"]) for a in agg] == [("a", 3), ("b", 1)]
    table = mean_std_table(rows, ["model"], ["f1"])
    assert table.splitlines()[2] == "| a | 0.700 ± 0.200 (n=3; 7 p / 71 i) |"
    matrix = mean_std_matrix([{**r, "test": "x"} for r in rows], "model", "test", "f1")
    assert "| b | 0.250 ± n/a (n=1; 3 p / 30 i) |" in matrix
