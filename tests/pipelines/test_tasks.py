"""Tasks: subtype (the store's 8 classes) and binary (benign vs malignant) through training, checkpoints,
evaluation, the suite and its report; patient-level splits are the same for both."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from histo_bench.errors import ConfigError
from ingest.breakhis_names import CLASSES
from ingest.store import ImageStore
from pipelines.data.base import DataConfig
from pipelines.data.loaders import make_loader
from pipelines.data.tasks import BINARY_CLASSES, align_classes, map_predictions, task_labels
from pipelines.training.checkpoint import load_model
from pipelines.training.classifier import TrainConfig, TrainingError, evaluate_split, train
from tests.pipelines.run_helpers import train_config as _config


def test_task_labels_and_loaders_carry_the_task(colour_store):
    store = ImageStore(colour_store)
    labels, classes = task_labels(store, "binary")
    assert classes == BINARY_CLASSES == ("benign", "malignant")
    assert np.array_equal(labels, store.malignant.astype(np.int64))
    assert np.array_equal(labels, np.isin(store.label, [4, 5, 6, 7]))  # the carcinomas are the malignant classes
    assert task_labels(store, "subtype")[1] == CLASSES
    from pipelines.data.dali import dali_available
    from pipelines.data.fusion import make_fusion_loader

    loaders = ["device", "torch"] + (["dali"] if dali_available() is None else [])
    for loader in loaders:
        config = DataConfig(image_size=32, load_size=40, batch_size=16, loader=loader, num_workers=0, task="binary")
        _, y, idx = next(iter(make_loader(store, "val", "100X", config, device="cpu", train=False)))
        assert np.array_equal(y.numpy(), store.malignant[idx.numpy()].astype(np.int64)), loader
    _, y, idx = next(iter(make_fusion_loader(store, "val", "100X,400X", config, device="cpu", train=False)))
    assert np.array_equal(y.numpy(), store.malignant[idx.numpy()].astype(np.int64))


def test_bad_task_is_a_clear_error():
    for make in (lambda: TrainConfig(task="grade"), lambda: DataConfig(task="grade")):
        with pytest.raises(ValueError, match="unknown task 'grade': use one of subtype, binary"):
            make()


def test_binary_run_trains_two_classes_reloads_and_evaluates(colour_store, tmp_path):
    result = train(_config(colour_store, tmp_path, task="binary", epochs=3))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]["val_per_class_f1"]) == {"benign", "malignant"}
    assert max(r["val_macro_f1"] for r in rows) > 0.6
    model, config, classes = load_model(result.run_dir / "best.pt")
    assert classes == ["benign", "malignant"] and config["task"] == "binary"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    splits = json.loads((result.run_dir / "splits.json").read_text())
    store = ImageStore(colour_store)
    assert splits["task"] == "binary" and splits["train"]["indices"] == store.select(split="train").tolist()

    data_config = DataConfig(image_size=32, load_size=40, batch_size=8, loader="device", task="binary")
    m = evaluate_split(model, store, "test", "100X", data_config, "cpu", None)
    assert set(m.per_class) == {"benign", "malignant"} and np.array(m.confusion).shape == (2, 2)
    assert m.n_patients > 0 and m.patient_accuracy is not None

    from benchmark.cli.app import app

    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(result.run_dir / "best.pt"), "--device", "cpu",
                                   "--mag", "100X"])
    assert res.exit_code == 0, res.output
    assert "binary task" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(result.run_dir / "best.pt"), "--device", "cpu",
                                   "--task", "subtype"])
    assert res.exit_code == 1 and "a binary model cannot be evaluated on the subtype task" in res.output

    with pytest.raises(TrainingError, match=r"holds a finished run with other settings \(task binary != subtype\)"):
        train(_config(colour_store, tmp_path, epochs=3))


def test_subtype_predictions_map_to_malignancy():
    store = SimpleNamespace(classes=CLASSES, label=np.array([0, 4, 7]), malignant=np.array([False, True, True]))
    pred = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    assert map_predictions(store, pred, "subtype", "binary").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert map_predictions(store, pred, "binary", "binary") is pred
    with pytest.raises(ValueError, match="a binary model cannot be evaluated on the subtype task"):
        map_predictions(store, pred, "binary", "subtype")


def test_default_run_directory_names_the_task():
    assert str(TrainConfig(model="m").run_dir) == "runs/m-100X"
    assert str(TrainConfig(model="m", task="binary").run_dir) == "runs/m-100X-binary"


def test_align_classes_renumbers_an_exact_mapping_and_refuses_any_other():
    store = SimpleNamespace(path="s.zarr", classes=("b", "a"), label=np.array([0, 1, 1]))
    assert align_classes(store, ["b", "a"], "subtype") is store
    view = align_classes(store, ["a", "b", "c"], "subtype")  # another order, and a class the store lacks
    assert view.classes == ("a", "b", "c") and view.label.tolist() == [1, 0, 0]
    assert store.label.tolist() == [0, 1, 1]  # the store itself is untouched
    with pytest.raises(ConfigError, match=r"s.zarr: its classes \['b', 'a'\] differ from the checkpoint's \['a'"):
        align_classes(store, ["a", "x"], "subtype")
    assert align_classes(store, ["benign", "malignant"], "binary") is store  # binary labels come from malignancy
