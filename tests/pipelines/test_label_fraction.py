"""Training on a fraction of the labels: a seeded, class-stratified subset of the train patients only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ingest.splits import SPLIT_CODES, SplitError, train_subset
from pipelines.training.classifier import TrainConfig, train
from tests.pipelines.run_helpers import train_config as _config


def test_train_subset_is_stratified_seeded_and_leaves_val_test_alone():
    # 2 classes x 10 train patients (3 images each) + val / test patients
    patients = np.array([f"p{c}{i}" for c in range(2) for i in range(10) for _ in range(3)]
                        + ["v0", "v1", "t0", "t1"])
    labels = np.array([c for c in range(2) for _ in range(10) for _ in range(3)] + [0, 1, 0, 1])
    codes = np.array([0] * 60 + [1, 1, 2, 2], dtype=np.int8)
    sub = train_subset(patients, labels, codes, 0.2, seed=0)
    assert np.array_equal(sub[60:], codes[60:])  # val / test untouched
    kept = {p for p, c in zip(patients.tolist(), sub.tolist(), strict=True) if c == SPLIT_CODES["train"]}
    assert len(kept) == 4 and sum(p.startswith("p0") for p in kept) == 2  # 20% of each class's 10 patients
    assert set(sub[:60].tolist()) == {SPLIT_CODES["train"], SPLIT_CODES["unused"]}
    assert np.array_equal(sub, train_subset(patients, labels, codes, 0.2, seed=0))
    assert not np.array_equal(sub, train_subset(patients, labels, codes, 0.2, seed=1))
    assert np.array_equal(train_subset(patients, labels, codes, 1.0), codes)
    tiny = train_subset(patients, labels, codes, 0.01)
    assert len({p for p, c in zip(patients.tolist(), tiny.tolist(), strict=True) if c == 0}) == 2  # one per class
    with pytest.raises(SplitError, match="label fraction must be in"):
        train_subset(patients, labels, codes, 0.0)


def test_training_on_a_label_fraction_records_it(colour_store, tmp_path):
    full = json.loads((train(_config(colour_store, tmp_path / "full", epochs=1, task="binary")).run_dir
                       / "splits.json").read_text())
    half = train(_config(colour_store, tmp_path / "half", epochs=1, task="binary", label_fraction=0.5))
    splits = json.loads((half.run_dir / "splits.json").read_text())
    assert splits["label_fraction"] == 0.5 and "0.5 of its patients per binary class" in splits["split"]
    assert set(splits["train"]["patients"]) < set(full["train"]["patients"])
    assert len(splits["train"]["patients"]) == len(full["train"]["patients"]) // 2
    for s in ("val", "test"):
        assert splits[s] == full[s]
    with pytest.raises(ValueError, match="label_fraction must be in"):
        TrainConfig(label_fraction=1.5)
