"""Faults in the middle of a checkpoint write, through the real ``histo-bench train`` in a subprocess: a SIGKILL
while ``last.pt`` or the ``best.pt`` candidate is half-written (the write is held open by a stalling file layer, see
tests/pipelines/cli_entry.py), and a disk that fills up between two epochs. Each time the files under their final
names stay whole, and a rerun resumes from the last good checkpoint to a complete run with every epoch logged once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from benchmark.cli.app import app
from pipelines.training.checkpoint import load_checkpoint
from tests.catalogue.world import mounted
from tests.pipelines.tiny_models import TinyCNN  # noqa: F401  (registers tiny_cnn_test for the in-process rerun)

ROOT = Path(__file__).resolve().parents[2]
ENTRY = str(ROOT / "tests/pipelines/cli_entry.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
EPOCHS = 3


def _args(store: Path, run: Path) -> list[str]:
    return ["train", "--model", "tiny_cnn_test", "--data", str(store), "--batch-size", "8", "--image-size", "32",
            "--lr", "0.03", "--epochs", str(EPOCHS), "--device", "cpu", "--out", str(run)]


def _epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def _finish(store: Path, run: Path) -> Result:
    """Rerun the same command to the end and check the run is whole (in this process: the fault was the
    subprocess's; a second one would only add torch's import time)."""
    proc = CliRunner().invoke(app, _args(store, run), env={"COLUMNS": "200"})
    assert proc.exit_code == 0, proc.output[-3000:]
    assert (run / "complete").exists()
    assert _epochs(run) == list(range(EPOCHS))  # every epoch logged exactly once
    assert load_checkpoint(run / "last.pt").epoch == EPOCHS - 1
    assert load_checkpoint(run / "best.pt").epoch in range(EPOCHS)
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".pending"))]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("name, nth", [("last.pt", 1), ("last.pt", 2), ("best.pt.pending", 1)])
def test_sigkill_in_the_middle_of_a_checkpoint_write_then_the_rerun_resumes(colour_store, tmp_path, name, nth):
    run, marker = tmp_path / "run", tmp_path / "stalled"
    env = {**ENV, "HISTO_TEST_STALL_WRITE": f"{name}:{nth}", "HISTO_TEST_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, ENTRY, *_args(colour_store, run)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the write never stalled (exit {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    half = [p for p in run.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")]
    assert half, "the kill landed outside the write"  # the half-written temporary file, never the real name
    if name == "last.pt" and nth > 1:  # the last good one: the epoch before the stalled write
        assert load_checkpoint(run / "last.pt").epoch == nth - 2
    assert _epochs(run) == list(range(len(_epochs(run))))
    resumed = _finish(colour_store, run)
    if name == "last.pt" and nth == 2:
        assert "(resumed)" in resumed.output, resumed.output


@pytest.mark.slow
def test_a_disk_that_fills_up_between_epochs_is_one_line_and_the_rerun_resumes(colour_store, tmp_path):
    disk = tmp_path / "disk"
    with mounted(disk, "size=4m") as ok:
        if not ok:
            pytest.skip("mounting a tmpfs needs root")
        run, paused, log = disk / "run", tmp_path / "paused", tmp_path / "stderr.txt"
        with log.open("w") as err_file:
            proc = subprocess.Popen([sys.executable, ENTRY, *_args(colour_store, run)],
                                    env={**ENV, "HISTO_TEST_PAUSE_S": "3", "HISTO_TEST_PAUSED": str(paused)}, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=err_file, text=True)
            deadline = time.monotonic() + 240
            while not (paused.exists() and paused.read_text()) and proc.poll() is None and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            assert paused.read_text() == "0"  # epoch 0 is whole on disk; the run sleeps before epoch 1
            ballast = disk / "ballast"
            subprocess.run(["dd", "if=/dev/zero", f"of={ballast}", "bs=64k"], capture_output=True)  # until full
            proc.wait(timeout=240)
        err = log.read_text()
        assert proc.returncode == 1, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on device" in errors[0].lower(), err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert load_checkpoint(run / "last.pt").epoch == 0  # the good one from before the disk filled
        assert not (run / "complete").exists()
        ballast.unlink()
        _finish(colour_store, run)
