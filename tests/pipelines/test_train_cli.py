"""``histo-bench train / evaluate / predict`` for every recipe, through the real command line (a subprocess where it
is killed or runs under torchrun, the typer app in-process otherwise): a run killed with SIGKILL after its first epoch
resumes and ends with each epoch once; a rerun is a no-op; other settings
are refused; every best.pt carries format, version and kind; DDP with 2 gloo processes; MIL and slide fusion learn.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig
from pipelines.training.checkpoint import FORMAT, VERSION
from pipelines.training.launch import LaunchError, plan_training
from tests.pipelines.tiny_models import TinyCNN  # noqa: F401  (registers tiny_cnn_test for the in-process runs)

ROOT = Path(__file__).resolve().parents[2]
ENTRY = str(ROOT / "tests/pipelines/cli_entry.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def write_colour_slide(path: Path, rgb: tuple[int, int, int], seed: int, width: int = 1536, height: int = 1024,
                       mpp: float = 0.25) -> Path:
    """A 40x two-level pyramidal TIFF (Aperio description, 0.25 µm/px): tissue islands of colour ``rgb`` with
    noise on white glass, so a slide's label can be learned from its colour."""
    import numpy as np
    import tifffile

    from ingest.synthetic.slide import aperio_description

    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 240, np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(6):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        blob = (xx - cx) ** 2 + (yy - cy) ** 2 < (rng.uniform(0.15, 0.3) * height) ** 2
        img[blob] = np.clip(np.array(rgb) + rng.normal(0, 20, (int(blob.sum()), 3)), 0, 255)
    with tifffile.TiffWriter(path) as tw:
        for i, d in enumerate((1, 4)):
            level = np.ascontiguousarray(img[::d, ::d])
            size = None if i == 0 else (level.shape[1], level.shape[0])
            tw.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None,
                     description=aperio_description(width, height, 256, 90, mpp, 40, size),
                     subfiletype=0 if i == 0 else 1, resolution=(1e4 / (mpp * d),) * 2, resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """10 small slides, benign ones pink and malignant ones purple (a slide label a model can learn), tiled at 10x
    with concentric views; and their labels CSV."""
    root = tmp_path_factory.mktemp("slides")
    paths = [write_colour_slide(root / f"s{i}.tiff", (200, 120, 170) if i % 2 else (120, 90, 180), seed=i)
             for i in range(10)]
    run_tiling(paths, root / "tiles.zarr", TileConfig(magnifications=(10,), tile_size=32, tissue_threshold=0.3,
                                                        multiscale=True))
    (root / "labels.csv").write_text("slide_id,label\n" + "".join(
        f"s{i},{'benign' if i % 2 else 'malignant'}\n" for i in range(10)))
    return root


def _recipes(colour, slides_root):
    store, labels = str(slides_root / "tiles.zarr"), str(slides_root / "labels.csv")
    return {
        "classifier": ["--model", "tiny_cnn_test", "--data", str(colour), "--batch-size", "8", "--image-size", "32",
                       "--lr", "0.03"],
        "mil": ["--model", "abmil", "--data", store, "--labels", labels, "--extractor", "resnet34",
                "--max-tiles", "16"],
        "slide_fusion": ["--model", "fusion_effnet_b0", "--data", store, "--labels", labels, "--max-tiles", "4",
                         "--batch-size", "8", "--max-steps", "2"],
        "mpcs": ["--model", "mpcs_efficientnet_b0", "--data", str(colour), "--batch-size", "8", "--image-size", "32",
                 "--max-steps", "2"],
    }


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _kill_after_first_epoch(args: list[str], run: Path) -> None:
    """Start the run, SIGKILL it once its first epoch row is in metrics.jsonl and last.pt is written (it pauses
    there; a kill between the row and last.pt reruns that epoch, tested in test_engine.py)."""
    proc = subprocess.Popen([sys.executable, ENTRY, *args], env={**ENV, "HISTO_TEST_PAUSE_S": "30"}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "metrics.jsonl").exists() and _epochs(run) and (run / "last.pt").exists():
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "mil", "slide_fusion", "mpcs"])
def test_killed_run_resumes_then_reruns_are_no_ops(kind, colour_store, slides, tmp_path):
    run = tmp_path / kind
    args = ["train", *_recipes(colour_store, slides)[kind], "--epochs", "3", "--device", "cpu", "--out", str(run)]
    _kill_after_first_epoch(args, run)
    assert _epochs(run) == [0] and (run / "last.pt").exists() and not (run / "complete").exists()

    # the rest in this process, through the same typer app (a subprocess each would only add torch's import time)
    resumed = _invoke(*args)
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert "(resumed)" in resumed.output
    assert _epochs(run) == [0, 1, 2]  # each epoch exactly once
    raw = torch.load(run / "best.pt", weights_only=True)
    assert (raw["format"], raw["version"], raw["kind"]) == (FORMAT, VERSION, kind)
    stamp = (run / "best.pt").stat().st_mtime_ns

    again = _invoke(*args)
    assert again.exit_code == 0 and "(already complete)" in again.output, again.output[-2000:]
    assert _epochs(run) == [0, 1, 2] and (run / "best.pt").stat().st_mtime_ns == stamp

    other = _invoke(*args[:-2], "--lr", "0.0123", "--out", str(run))
    assert other.exit_code == 1
    assert "lr" in other.output and "Traceback" not in other.output and len(other.output.strip().splitlines()) == 1

    evaluated = _invoke("evaluate", "--checkpoint", str(run / "best.pt"), "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output[-2000:]
    assert "macro-F1" in evaluated.output and "chance" in evaluated.output
    predicted = _invoke("predict", "--checkpoint", str(run / "best.pt"), "--device", "cpu", "--out",
                        str(tmp_path / "pred"))
    assert predicted.exit_code == 0, predicted.output[-2000:]
    written = "embeddings.csv" if kind == "mpcs" else "predictions.csv"
    assert len((tmp_path / "pred" / written).read_text().splitlines()) > 1


def _invoke(*args):
    from typer.testing import CliRunner

    from benchmark.cli.app import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mil", "slide_fusion", "mpcs"])  # the classifier: tests/pipelines/test_ddp.py
def test_every_recipe_under_torchrun_with_two_gloo_processes(kind, colour_store, slides, tmp_path):
    run = tmp_path / kind
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", ENTRY, "train", *_recipes(colour_store, slides)[kind], "--epochs", "2",
           "--device", "cpu", "--out", str(run)]
    proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # written once, by rank 0
    assert all(r["world_size"] == 2 for r in rows)
    assert torch.load(run / "best.pt", weights_only=True)["kind"] == kind


@pytest.mark.slow
def test_mil_and_slide_fusion_learn_the_slide_label(slides, tmp_path):
    """Chance is 0.5 macro-F1 (two balanced labels); both must reach 0.75 on the 4 held-out test slides (they reach
    1.0 here: the label is the slide's colour)."""
    from pipelines.training.mil import MILConfig, train_mil
    from pipelines.training.slide_fusion import SlideFusionConfig, train_slide_fusion

    store, labels = str(slides / "tiles.zarr"), str(slides / "labels.csv")
    split = (0.4, 0.2, 0.4)
    mil = train_mil(MILConfig(store=store, labels=labels, model="abmil", extractor="resnet34", epochs=10, lr=1e-3,
                              split=split, device="cpu", out=str(tmp_path / "mil")))
    assert mil["n_slides"]["test"] == 4
    assert mil["test"]["macro_f1"] >= 0.75, mil["test"]
    fusion = train_slide_fusion(SlideFusionConfig(store=store, labels=labels, epochs=4, batch_size=8, max_tiles=32,
                                                  lr=1e-3, split=split, device="cpu", out=str(tmp_path / "sf")))
    assert fusion["test_slide"]["macro_f1"] >= 0.75, fusion["test_slide"]


def test_the_model_and_the_store_pick_the_recipe(colour_store, slides):
    store, labels = str(slides / "tiles.zarr"), str(slides / "labels.csv")
    assert plan_training("resnet50", {"data": str(colour_store)}).kind == "classifier"
    assert plan_training("fusion_effnet_b0", {"data": str(colour_store)}).kind == "fusion"
    assert plan_training("fusion_effnet_b0", {"data": store, "labels": labels}).kind == "slide_fusion"
    assert plan_training("abmil_gated", {"data": store, "labels": labels}).kind == "mil"
    assert plan_training("mpcs_resnet50", {"data": str(colour_store)}).kind == "mpcs"
    mil = plan_training("abmil", {"data": store, "labels": labels, "max_tiles": 7, "max_steps": 2})
    assert (mil.config.max_patches, mil.config.max_steps_per_epoch, mil.config.device) == (7, 2, "auto")


@pytest.mark.parametrize("model, options, message", [
    ("resnet50", {"data": "slides"}, "trains on an image store.*is a slide store"),
    ("abmil", {"data": "colour"}, "trains on a slide store.*is an image store"),
    ("abmil", {}, "trains on a slide store"),
    ("abmil", {"data": "slides"}, "needs --labels"),
    ("abmil", {"data": "slides", "labels": "missing.csv"}, "missing.csv: no such labels file"),
    ("abmil", {"data": "slides", "labels": "labels", "image_size": 64}, "--image-size does not apply to abmil"),
    ("resnet50", {"data": "colour", "pair": "fixed"}, "--pair does not apply to resnet50"),
    ("mpcs_resnet50", {"data": "colour", "mag": "400X"}, "--mag does not apply"),
    ("resnet50", {"data": "nowhere"}, "nowhere: no such store"),
    ("resnet5O", {}, "unknown model 'resnet5O'"),
])
def test_command_lines_that_name_no_recipe_are_refused(model, options, message, colour_store, slides,
                                                       tmp_path):
    paths = {"slides": str(slides / "tiles.zarr"), "colour": str(colour_store), "labels": str(slides / "labels.csv"),
             "missing.csv": str(tmp_path / "missing.csv"), "nowhere": str(tmp_path / "nowhere")}
    with pytest.raises(LaunchError, match=message):
        plan_training(model, {k: paths.get(v, v) if isinstance(v, str) else v for k, v in options.items()})


def test_old_verbs_are_gone_from_help():
    from typer.testing import CliRunner

    from benchmark.cli.app import app

    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for verb in ("mil-train", "mil-infer", "pretrain", "fusion-slides"):
        assert f" {verb} " not in res.output
    for verb in ("train", "evaluate", "predict"):
        assert f" {verb} " in res.output


@pytest.mark.slow
def test_an_interrupted_run_rerun_with_other_settings_starts_over(colour_store, slides, tmp_path):
    run = tmp_path / "run"
    args = ["train", *_recipes(colour_store, slides)["classifier"], "--epochs", "2", "--device", "cpu", "--out",
            str(run)]
    _kill_after_first_epoch(args, run)
    again = _invoke(*args[:-2], "--lr", "0.01", "--out", str(run))  # in-process: only the kill needs a subprocess
    assert again.exit_code == 0, again.output[-2000:]
    assert "(resumed)" not in again.output and _epochs(run) == [0, 1]
    assert "written with other settings (lr 0.03 != 0.01); starting over" in " ".join(again.output.split())
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01


def test_predict_refuses_mixed_ensembles_and_options_that_do_not_apply(colour_store, slides, tmp_path):
    from pipelines.evaluation.predict import PredictError, run_predict
    from pipelines.training.classifier import TrainConfig, train
    from pipelines.training.mil import MILConfig, train_mil

    runs = []
    for size in (32, 40):
        train(TrainConfig(model="tiny_cnn_test", store=str(colour_store), epochs=1, batch_size=8, image_size=size,
                          device="cpu", max_steps_per_epoch=1, out=str(tmp_path / f"c{size}")))
        runs.append(tmp_path / f"c{size}" / "best.pt")
    with pytest.raises(PredictError, match="trained with image_size 40.*same inputs"):
        run_predict(runs, None, tmp_path / "p", device="cpu")
    mixed = _invoke("predict", "--checkpoint", str(runs[0]), "--checkpoint", str(runs[1]), "--device", "cpu")
    assert mixed.exit_code == 1 and mixed.output.startswith("error: ") and len(mixed.output.splitlines()) == 1
    assert "trained with image_size 40" in mixed.output
    ensemble = _invoke("predict", "--checkpoint", str(runs[0]), "--checkpoint", str(runs[0]), "--split", "val",
                       "--device", "cpu", "--out", str(tmp_path / "e"))
    assert ensemble.exit_code == 0, ensemble.output
    rows = (tmp_path / "e" / "predictions.csv").read_text().splitlines()
    assert len(rows) > 1 and all(",val," in r for r in rows[1:])
    with pytest.raises(PredictError, match="--scale does not apply to a classifier checkpoint"):
        run_predict(runs[:1], None, tmp_path / "p", scale="10x", device="cpu")
    path = run_predict(runs[:1] * 2, None, tmp_path / "p", split="test", device="cpu")  # an ensemble of one model
    rows = path.read_text().splitlines()
    assert len(rows) > 1 and all(",test," in r for r in rows[1:])

    store, labels = str(slides / "tiles.zarr"), str(slides / "labels.csv")
    train_mil(MILConfig(store=store, labels=labels, model="abmil", extractor="resnet34", epochs=1, device="cpu",
                        split=(0.4, 0.2, 0.4), out=str(tmp_path / "mil")))
    mil = tmp_path / "mil" / "best.pt"
    with pytest.raises(PredictError, match="--split does not apply to a mil checkpoint"):
        run_predict([mil], None, tmp_path / "m", split="test", device="cpu")
    own = run_predict([mil], None, tmp_path / "m", device="cpu").read_text().splitlines()
    assert own[0].startswith("slide_id,label,predicted") and len(own) == 11  # the run's labels, every slide
    other = slides / "other.zarr"  # a store the run never saw: no labels are guessed for it
    run_tiling(sorted(slides.glob("s[0-2].tiff")), other, TileConfig(magnifications=(10,), tile_size=32,
                                                                     tissue_threshold=0.3))
    new = run_predict([mil], other, tmp_path / "n", device="cpu").read_text().splitlines()
    assert new[0].startswith("slide_id,predicted") and len(new) == 4
