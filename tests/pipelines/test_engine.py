"""The one training engine: learning, the run-directory contract (resume, skip, refuse), faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.training.checkpoint import load_checkpoint
from pipelines.training.engine import FitConfig, lr_factor
from pipelines.training.run_directory import FitError, run_differences
from tests.pipelines.toy_recipe import run


def _epochs(run_dir) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_learns_and_writes_the_run_contract(tmp_path):
    result = run(tmp_path / "run", epochs=3)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["val_accuracy"] > 0.9  # chance is 0.5
    assert set(rows[0]) >= {"epoch", "train_loss", "lr", "epoch_seconds", "items_per_s", "peak_gpu_mb",
                            "val_macro_f1", "val_accuracy"}
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"config.json", "metrics.jsonl", "tb", "best.pt",
                                                              "last.pt", "complete"}
    best = load_checkpoint(tmp_path / "run" / "best.pt", ("classifier",))
    assert best.epoch == result.best_epoch and "optimizer" not in best.state
    # the final epoch's last.pt holds the weights only: nothing is left to train, so no optimizer state
    assert set(load_checkpoint(tmp_path / "run" / "last.pt").state) == {"model"}


def test_a_run_killed_after_its_final_last_pt_finishes_without_training(tmp_path):
    run(tmp_path / "run", epochs=2)
    stamps = {n: (tmp_path / "run" / n).stat().st_mtime_ns for n in ("best.pt", "last.pt")}
    (tmp_path / "run" / "complete").unlink()  # as if killed between the final last.pt and the marker
    again = run(tmp_path / "run", epochs=2)
    assert again.resumed and again.rows == [] and _epochs(tmp_path / "run") == [0, 1]
    assert (tmp_path / "run" / "complete").exists()
    assert {n: (tmp_path / "run" / n).stat().st_mtime_ns for n in stamps} == stamps


def test_a_complete_run_is_a_no_op_and_other_settings_are_refused(tmp_path):
    run(tmp_path / "run", epochs=2)
    stamp = (tmp_path / "run" / "best.pt").stat().st_mtime_ns
    again = run(tmp_path / "run", epochs=2)
    assert again.already_complete and (tmp_path / "run" / "best.pt").stat().st_mtime_ns == stamp
    with pytest.raises(FitError, match=r"finished run with other settings \(epochs 2 != 3\)"):
        run(tmp_path / "run", epochs=3)


def test_sigkill_mid_epoch_resumes_and_logs_each_epoch_once(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tests.pipelines.toy_recipe", str(run_dir), "3", "0.05"])
    deadline = time.monotonic() + 120
    while not ((run_dir / "metrics.jsonl").exists() and _epochs(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.12)  # a few steps into epoch 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "complete").exists()
    assert "optimizer" in load_checkpoint(run_dir / "last.pt").state  # mid-run: what resuming needs
    result = run(run_dir, epochs=3, step_sleep=0.0)
    assert result.resumed and _epochs(run_dir) == [0, 1, 2]
    assert (run_dir / "complete").exists()


def test_a_diverging_loss_names_the_step(tmp_path):
    with pytest.raises(FitError, match=r"loss became nan at epoch 1 step 2"):
        run(tmp_path / "run", epochs=2, nan_at=8)  # 6 steps per epoch


def test_fixed_budget_keeps_the_last_epoch(tmp_path):
    result = run(tmp_path / "run", epochs=3, monitor=None)
    assert result.best_epoch == 2 and load_checkpoint(tmp_path / "run" / "best.pt").epoch == 2


def test_early_stopping_counts_the_epochs_it_ran(tmp_path):
    result = run(tmp_path / "run", epochs=10, patience=1, lr=1e-9)  # nothing improves after epoch 0
    assert result.epochs_run == 2 and _epochs(tmp_path / "run") == [0, 1]
    # the epoch that made it stop was its final one: weights only, and a rerun killed before `complete` trains nothing
    assert set(load_checkpoint(tmp_path / "run" / "last.pt").state) == {"model"}
    (tmp_path / "run" / "complete").unlink()
    again = run(tmp_path / "run", epochs=10, patience=1, lr=1e-9)
    assert again.resumed and again.rows == [] and again.epochs_run == 2 and _epochs(tmp_path / "run") == [0, 1]
    # one epoch short of stopping, last.pt still holds what resuming needs (a NaN loss ends that run in epoch 2)
    with pytest.raises(FitError, match="loss"):
        run(tmp_path / "short", epochs=10, patience=2, lr=1e-9, nan_at=13)
    last = load_checkpoint(tmp_path / "short" / "last.pt")
    assert last.epoch == 1 and last.extra["stale"] == 1 and "optimizer" in last.state
    # more patience is other settings: the run starts over instead of training on from a weights-only last.pt
    (tmp_path / "run" / "complete").unlink()
    longer = run(tmp_path / "run", epochs=3, patience=5, lr=1e-9)
    assert not longer.resumed and longer.epochs_run == 3 and _epochs(tmp_path / "run") == [0, 1, 2]


def test_schedule_and_config_checks():
    assert lr_factor(0, 4, 20) == 0.25 and lr_factor(3, 4, 20) == 1.0 and lr_factor(20, 4, 20) == 0.0
    assert run_differences({"lr": 1, "log_every": 5}, {"lr": 2, "log_every": 9}) == ["lr 1 != 2"]
    with pytest.raises(ValueError, match="precision"):
        FitConfig(epochs=1, precision="fp8")
    with pytest.raises(ValueError, match="epochs"):
        FitConfig(epochs=0)


def test_a_run_finished_by_an_older_histo_bench_is_named(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"toy": True, "seed": 0, "epochs": 2, "lr": 0.1}))
    (run_dir / "complete").write_text(json.dumps({"best_epoch": 0, "best_val": {}, "epochs_run": 2}))
    with pytest.raises(FitError, match="finished by an older histo-bench"):
        run(run_dir, epochs=2)


def test_a_best_candidate_left_by_a_kill_is_promoted_only_when_last_pt_names_it(tmp_path):
    from pipelines.training.checkpoint import save_checkpoint
    from pipelines.training.run_directory import PENDING_BEST, settle_pending_best
    from tests.pipelines.toy_recipe import ToyRecipe

    recipe = ToyRecipe()
    save_checkpoint(tmp_path / PENDING_BEST, recipe.checkpoint({"model": recipe.model.state_dict()}, 3, {}))
    settle_pending_best(tmp_path, best_epoch=2)  # last.pt was not written for epoch 3: the candidate goes
    assert not (tmp_path / PENDING_BEST).exists() and not (tmp_path / "best.pt").exists()
    save_checkpoint(tmp_path / PENDING_BEST, recipe.checkpoint({"model": recipe.model.state_dict()}, 3, {}))
    settle_pending_best(tmp_path, best_epoch=3)  # last.pt names it: it becomes best.pt
    assert load_checkpoint(tmp_path / "best.pt").epoch == 3


def test_a_missing_monitor_is_a_clear_error(tmp_path):
    with pytest.raises(FitError, match="has no 'val_auc'"):
        run(tmp_path / "run", epochs=1, monitor="val_auc")
