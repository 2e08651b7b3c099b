"""TensorBoard event files beside metrics.jsonl (read back with TensorBoard's own reader), resume, and the optional
tensorboard / wandb imports."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from typer.testing import CliRunner

from ingest.store import ImageStore
from pipelines.training import tracking
from pipelines.training.classifier import TrainingError, train
from pipelines.training.tracking import RunLogger
from tests.pipelines.run_helpers import tb_scalars
from tests.pipelines.run_helpers import train_config as _config

EPOCH_TAGS = {"epoch/train_loss", "epoch/lr", "epoch/epoch_seconds", "epoch/items_per_s", "epoch/val_macro_f1",
              "epoch/val_accuracy", "epoch/val_balanced_accuracy", "epoch/val_patient_accuracy"}


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_training_run_writes_tensorboard_curves_beside_the_jsonl(colour_store, tmp_path):
    result = train(_config(colour_store, tmp_path, epochs=3, log_every=2))
    assert list((result.run_dir / "tb").glob("events.out.tfevents.*"))
    scalars = tb_scalars(result.run_dir / "tb")
    assert EPOCH_TAGS | {"step/train_loss", "step/lr", "epoch/val_per_class_f1/adenosis"} <= set(scalars)
    assert "epoch/peak_gpu_mb" not in scalars and "epoch/world_size" not in scalars  # None on CPU; bookkeeping
    rows = _rows(result.run_dir)
    for tag in EPOCH_TAGS:  # one value per epoch, equal to the JSONL's
        assert [s for s, _ in scalars[tag]] == [0, 1, 2]
        column = tag.removeprefix("epoch/")
        assert [v for _, v in scalars[tag]] == pytest.approx([r[column] for r in rows], rel=1e-6)
    steps = [s for s, _ in scalars["step/train_loss"]]
    assert steps and all(s % 2 == 0 for s in steps) and steps == sorted(set(steps))
    assert "wandb" not in sys.modules  # never imported unless asked for


def test_resume_keeps_one_point_per_epoch_and_step(colour_store, tmp_path):
    def interrupt(epoch, step, steps, loss):
        if epoch == 2 and step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(colour_store, tmp_path, log_every=1), progress=interrupt)
    result = train(_config(colour_store, tmp_path, log_every=1))
    assert result.resumed
    scalars = tb_scalars(result.run_dir / "tb")
    assert [s for s, _ in scalars["epoch/val_macro_f1"]] == [0, 1, 2, 3]
    steps = [s for s, _ in scalars["step/train_loss"]]
    per_epoch = len(ImageStore(colour_store).select(split="train", magnification="100X")) // 8
    assert steps == list(range(1, 4 * per_epoch + 1))  # the interrupted epoch's points were replaced, not doubled
    assert len(_rows(result.run_dir)) == 4


def test_missing_tensorboard_warns_once_and_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    tracking._summary_writer.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="pipelines.training.tracking"):
            for name in ("a", "b"):
                with RunLogger(tmp_path / name, config={"x": 1}) as logger:
                    logger.log_epoch({"epoch": 0, "train_loss": 1.0}, 0)
                    logger.log_step({"train_loss": 1.0}, 1)
    finally:
        tracking._summary_writer.cache_clear()
    warnings = [r for r in caplog.records if "TensorBoard is not importable" in r.getMessage()]
    assert len(warnings) == 1 and not (tmp_path / "a" / "tb").exists()


def test_scalars_flatten_rows_and_skip_what_is_not_a_curve():
    row = {"epoch": 3, "world_size": 2, "train_loss": 0.5, "peak_gpu_mb": None, "note": "x", "flag": True,
           "val_per_class_f1": {"a": 1.0, "b": 0}}
    assert tracking.scalars(row, "epoch") == {"epoch/train_loss": 0.5, "epoch/val_per_class_f1/a": 1.0,
                                              "epoch/val_per_class_f1/b": 0.0}


def test_wandb_asked_for_but_not_installed_is_a_clear_error(colour_store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(TrainingError, match=r"--wandb needs Weights & Biases.*pip install wandb"):
        train(_config(colour_store, tmp_path, wandb=True))
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(RuntimeError, match="pip install wandb"):
        RunLogger(tmp_path / "x", wandb=True)

    from benchmark.cli.app import app

    res = CliRunner().invoke(app, ["train", "--model", "tiny_cnn_test", "--data", str(colour_store), "--device",
                                   "cpu", "--wandb", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 1 and "pip install wandb" in res.output


def test_resume_ignores_logging_only_fields():
    from dataclasses import asdict

    from pipelines.training.classifier import TrainConfig
    from pipelines.training.run_directory import run_differences

    base = asdict(TrainConfig())
    assert not run_differences({**base, "log_every": 10, "wandb": False}, {**base, "log_every": 1, "wandb": True})
    assert run_differences({**base, "task": "subtype"}, {**base, "task": "binary"}) == ["task subtype != binary"]
