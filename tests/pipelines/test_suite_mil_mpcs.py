"""The ``mil-slides`` and ``mpcs`` suites end to end through the CLI, in ``--quick`` mode on synthetic data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.cli.app import app


def _check_report(suite_dir):
    for name in ("report.md", "report.html"):
        text = (suite_dir / name).read_text()
        assert "mean ± std" in text and "n=" in text and "SYNTHETIC" in text, name
    return (suite_dir / "report.md").read_text()


def test_mil_slides_quick_on_the_demo_slides(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTO_BENCH_HOME", str(tmp_path / "home"))  # the quick demo slides are generated here
    out = tmp_path / "mil"
    res = CliRunner().invoke(app, ["suite", "mil-slides", "--quick", "--folds", "2", "--device", "cpu",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = _check_report(out)
    assert "QUICK MODE" in report and "slide-level 2-fold cross-validation" in report
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]
    assert {(c["attention"], c["extractor"], c["loss"]) for c in cells} == {
        (a, e, loss) for a in ("simple", "gated") for e in ("resnet34", "vit_small") for loss in ("ce", "focal")}
    assert len(cells) == 8 * 2 and {c["fold"] for c in cells} == {0, 1}
    assert all(c["n_images"] > 0 and c["n_patients"] > 0 for c in cells)
    assert sum(c["n_images"] for c in cells if c["attention"] == "simple" and c["extractor"] == "resnet34"
               and c["loss"] == "ce") == 6  # the two test folds cover the six slides once
    rows = list(csv.DictReader((out / "ensemble" / "predictions.csv").open()))
    assert len(rows) == 6 and set(rows[0]) == {"slide_id", "label", "predicted", "p_benign", "p_malignant"}
    assert all(abs(float(r["p_benign"]) + float(r["p_malignant"]) - 1) < 1e-5 for r in rows)
    attention = np.load(out / "ensemble" / "attention" / f"{rows[0]['slide_id']}.npy")
    assert attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(results["best"]["checkpoints"]) == 2 and "ensemble/attention/quick-slide-1.png" in report
    assert len(list(csv.DictReader((out / "oof_predictions.csv").open()))) == 6
    res = CliRunner().invoke(app, ["report", str(out)])  # the report rebuilds from results.json alone
    assert res.exit_code == 0, res.output


def test_mil_slides_rejects_unknown_models(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTO_BENCH_HOME", str(tmp_path / "home"))
    from benchmark.suites import StudyConfig
    from benchmark.suites.mil_slides import _grid

    assert _grid(StudyConfig(suite="mil-slides", models=("abmil_gated", "resnet50"))) == (("abmil_gated",),
                                                                                           ("resnet50",))
    with pytest.raises(ValueError, match="attention models .* and/or tile extractors"):
        _grid(StudyConfig(suite="mil-slides", models=("deit_small",)))


@pytest.fixture(scope="module")
def tiny_demo_store(tmp_path_factory):
    """The demo generator at a CPU size: 2 benign + 2 malignant classes x 4 patients x 4 magnifications x 4 images of
    70x46 px (4 classes, not the demo's 8: half the images in each of the suite's evaluations)."""
    from ingest.breakhis import IngestConfig, ingest_breakhis
    from ingest.synthetic.breakhis_tree import SyntheticConfig
    from ingest.synthetic.demo import write_demo_tree

    root = tmp_path_factory.mktemp("mpcs")
    write_demo_tree(root / "tree", SyntheticConfig(patients_per_class=4, images_per_magnification=4, height=46,
                                                   width=70, classes=("adenosis", "fibroadenoma",
                                                                      "ductal_carcinoma", "lobular_carcinoma")))
    ingest_breakhis(IngestConfig(root=str(root / "tree"), out=str(root / "s.zarr"), workers=1))
    return root / "s.zarr"


def test_mpcs_quick(tiny_demo_store, tmp_path):
    out = tmp_path / "mpcs"
    res = CliRunner().invoke(app, ["suite", "mpcs", "--quick", "--data", str(tiny_demo_store), "--folds", "2",
                                   "--image-size", "32", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = _check_report(out)
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]
    assert results["tasks"] == ["binary"] and {c["task"] for c in cells} == {"binary"}
    inits = ("MPCS ordered", "MPCS fixed", "MPCS random", "random init")
    assert {(c["init"], c["protocol"], c["labels"]) for c in cells} == {
        (i, p, lab) for i in inits for p in ("fine-tune", "linear") for lab in ("100%", "20%")}
    assert len(cells) == 16 * 2 and all(c["n_images"] > 0 and c["n_patients"] > 0 for c in cells)
    assert [p["pair"] for p in results["pretraining"]] == ["ordered", "fixed", "random"] * 2
    assert all(np.isfinite(p["final_loss"]) for p in results["pretraining"])
    assert results["skipped"][0]["init"].startswith("ImageNet") and "not faked" in results["skipped"][0]["reason"]
    assert "## Skipped" in report and (out / "mpcs_binary.png").exists()
    # linear evaluation trains the head only; 20% of the labels = a subset of the train patients, same test set
    run = next(c for c in cells if c["protocol"] == "linear" and c["labels"] == "20%" and c["fold"] == 0)
    splits = json.loads((tmp_path / run["run_dir"] / "splits.json").read_text())
    full = next(c for c in cells if c["init"] == run["init"] and c["protocol"] == "linear" and c["labels"] == "100%"
                and c["fold"] == 0)
    full_splits = json.loads((tmp_path / full["run_dir"] / "splits.json").read_text())
    assert splits["label_fraction"] == 0.2 and set(splits["train"]["patients"]) < set(full_splits["train"]["patients"])
    assert splits["test"] == full_splits["test"]
    config = json.loads((tmp_path / run["run_dir"] / "config.json").read_text())
    assert config["unfreeze"] == "head" and config["model"] == "efficientnet_b0"


def test_imagenet_baseline_needs_a_local_file(tmp_path):
    from benchmark.suites import StudyConfig
    from benchmark.suites.mpcs import _imagenet

    fields, why = _imagenet(StudyConfig(suite="mpcs"), "resnet50")
    assert fields is None and "--weights-dir" in why and "not faked" in why
    (tmp_path / "w").mkdir()
    fields, why = _imagenet(StudyConfig(suite="mpcs", weights_dir=str(tmp_path / "w")), "resnet50")
    assert fields is None and "no weights for resnet50" in why
    (tmp_path / "w" / "resnet50.safetensors").write_bytes(b"")
    fields, why = _imagenet(StudyConfig(suite="mpcs", weights_dir=str(tmp_path / "w")), "resnet50")
    assert fields == {"weights": str(tmp_path / "w" / "resnet50.safetensors"), "pretrained": False}


def test_mpcs_pretraining_failures_are_not_reported_as_skipped(tmp_path, monkeypatch):
    import benchmark.suites.mpcs as pretrain_mod  # the name as the suite calls it
    from benchmark.suites import StudyConfig
    from benchmark.suites.base import SuiteContext
    from benchmark.suites.mpcs import _pretrain

    study = StudyConfig(suite="mpcs", store=str(tmp_path / "s.zarr"), out=str(tmp_path / "out"), device="cpu")

    def no_pairs(config, progress=None):
        raise ValueError("only 3 train images have a partner")

    monkeypatch.setattr(pretrain_mod, "pretrain", no_pairs)
    weights, info = _pretrain(study, SuiteContext(study), "mpcs_efficientnet_b0", "fixed", "binary", 0, 0)
    assert weights is None and info["skipped"] == "only 3 train images have a partner"

    def oom(config, progress=None):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(pretrain_mod, "pretrain", oom)
    with pytest.raises(RuntimeError, match="out of memory"):
        _pretrain(study, SuiteContext(study), "mpcs_efficientnet_b0", "fixed", "binary", 0, 0)


def test_mpcs_report_keeps_backbones_apart(tmp_path, monkeypatch):
    import benchmark.suites.mpcs as mpcs

    captured = {}
    monkeypatch.setattr(mpcs, "grouped_bars", lambda groups, series, *a, **k: captured.setdefault("series", series))
    monkeypatch.setattr(mpcs, "write_suite_report",
                        lambda suite_dir, results, title, sections, figures: captured.setdefault("sections", sections))
    cells = [{"task": "binary", "train": "200X", "init": "random init", "protocol": "linear", "labels": "100%",
              "backbone": backbone, "macro_f1": f1, "accuracy": f1, "balanced_accuracy": f1, "patient_accuracy": f1}
             for backbone, f1 in (("resnet50", 0.9), ("efficientnet_b0", 0.5))]
    results = {"cells": cells, "tasks": ["binary"], "classes": {"binary": ["benign", "malignant"]},
               "models": ["mpcs_resnet50", "mpcs_efficientnet_b0"], "magnifications": ["200X"],
               "pretrain_settings": {"epochs": 1}, "imagenet": "none"}
    mpcs._report(tmp_path, results)
    table = next(s for s in captured["sections"] if s.startswith("## 200X"))
    assert "| resnet50 | linear | 100% | random init | 0.900" in table
    assert "| efficientnet_b0 | linear | 100% | random init | 0.500" in table
    assert set(captured["series"]) == {"resnet50: random init", "efficientnet_b0: random init"}
    assert captured["series"]["resnet50: random init"][0][2] == pytest.approx(0.9)  # linear, 100%
