"""The trainer on a tiny learnable store with a tiny CNN: learning, resume, divergence, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ingest.breakhis_names import CLASSES
from pipelines.training.checkpoint import load_model
from pipelines.training.classifier import TrainingError, class_weights, train
from pipelines.training.engine import lr_factor
from tests.pipelines.run_helpers import train_config as _config
from tests.pipelines.tiny_models import TinyCNN


def test_learns_and_writes_every_output(colour_store, tmp_path):
    result = train(_config(colour_store, tmp_path, epochs=6))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(6))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_macro_f1"] for r in rows) > 0.5  # chance is 0.125
    assert set(rows[0]) >= {"train_loss", "lr", "epoch_seconds", "items_per_s", "val_accuracy",
                            "val_macro_f1", "val_per_class_f1", "val_patient_accuracy", "peak_gpu_mb"}
    splits = json.loads((result.run_dir / "splits.json").read_text())
    assert not set(splits["train"]["patients"]) & set(splits["val"]["patients"])
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["lr"] == 3e-2 and config["model"] == "tiny_cnn_test"
    model, cfg, classes = load_model(result.run_dir / "best.pt")
    assert classes == list(CLASSES) and isinstance(model, TinyCNN)
    for name in ("best.pt", "last.pt"):
        raw = torch.load(result.run_dir / name, weights_only=True)
        assert (raw["format"], raw["version"], raw["kind"]) == ("histo-bench/checkpoint", 1, "classifier")
    assert result.best_val["macro_f1"] == max(r["val_macro_f1"] for r in rows)
    again = train(_config(colour_store, tmp_path, epochs=6, log_every=0))  # logging settings do not count
    assert again.already_complete and again.best_epoch == result.best_epoch
    # other settings: an error naming what differs, never the old run's numbers reported as the new one's
    with pytest.raises(TrainingError, match=r"holds a finished run with other settings \(epochs 6 != 2, lr 0.03 != "
                                            r"0.01\); use another --out or delete it"):
        train(_config(colour_store, tmp_path, epochs=2, lr=1e-2))


def test_resume_after_interruption(colour_store, tmp_path):
    def interrupt(epoch, step, steps, loss):
        if epoch == 2 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(colour_store, tmp_path), progress=interrupt)
    # as if interrupted after epoch 2's row was appended but before its last.pt was saved (and mid-row)
    with (tmp_path / "run" / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"epoch": 2, "train_loss": 1.0}) + "\n" + '{"epoch": 3, "tra')
    seen = []
    result = train(_config(colour_store, tmp_path), progress=lambda e, s, n, loss: seen.append(e))
    assert result.resumed and min(seen) == 2
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]


def test_a_last_pt_of_the_old_format_is_named_and_trained_over(colour_store, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "config": "{}", "epoch": 5, "best": "null"}, run / "last.pt")  # before the format
    result = train(_config(colour_store, tmp_path, epochs=1, max_steps_per_epoch=1))
    assert not result.resumed and result.epochs_run == 1
    assert any("last.pt: written before the versioned checkpoint format" in r.message and "starting over"
               in r.message for r in caplog.records)
    assert torch.load(run / "last.pt", weights_only=True)["format"] == "histo-bench/checkpoint"


def test_diverging_loss_stops_with_a_clear_error(colour_store, tmp_path):
    with pytest.raises(TrainingError, match="loss became nan at epoch 0 step 0"):
        train(_config(colour_store, tmp_path, model="nan_cnn_test"))


def test_non_classifier_models_are_refused_clearly(colour_store, tmp_path):
    with pytest.raises(TrainingError, match="abmil is a mil model"):
        train(_config(colour_store, tmp_path, model="abmil"))
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        train(_config(colour_store, tmp_path, model="nope"))


def test_bad_config_and_empty_split(colour_store, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        _config(colour_store, tmp_path, precision="int4")
    with pytest.raises(TrainingError, match="no train images at 40X"):
        train(_config(colour_store, tmp_path, train_magnification="40X"))


def test_schedule_and_class_weights():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1) and lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5) and lr_factor(100, 10, 100) == pytest.approx(0.0)
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    assert torch.isfinite(torch.as_tensor(w)).all()


def test_fusion_model_trains_on_same_patient_magnification_pairs(colour_store, tmp_path):
    from ingest.store import ImageStore
    from pipelines.data.base import DataConfig
    from pipelines.data.fusion import make_fusion_loader

    store = ImageStore(colour_store)
    loader = make_fusion_loader(store, "train", "100X,400X", DataConfig(image_size=32, load_size=40, batch_size=4),
                                device="cpu", train=True, seed=0)
    x, y, idx = next(iter(loader))
    assert x.shape == (4, 2, 3, 32, 32) and set(store.magnification[idx.numpy()]) == {"100X"}
    anchors = loader.anchors[: len(idx)]
    assert len(anchors) == 4
    for k, pos in enumerate(loader.anchors[:8]):  # every partner is the same patient at the other magnification
        partners = loader.partners[0][k]
        assert set(store.patient[loader.indices[partners].numpy()]) == {store.patient[loader.indices[pos].item()]}
        assert set(store.magnification[loader.indices[partners].numpy()]) == {"400X"}
    result = train(_config(colour_store, tmp_path, model="fusion_effnet_b0", train_magnification="100X,400X",
                           epochs=2))
    model, config, _ = load_model(result.run_dir / "best.pt")
    assert model.n_inputs == 2 and result.epochs_run == 2
