"""The suites end to end from the CLI (``histo-bench suite NAME --quick``) on a small synthetic store, ``suite``
without NAME (its default, magnification-transfer), the per-input augmentation and the weighted sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from benchmark.cli.app import app
from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.synthetic.breakhis_tree import SyntheticConfig
from ingest.synthetic.demo import write_demo_tree
from tests.pipelines.tiny_models import TinyCNN  # noqa: F401  (registers tiny_cnn_test)

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    """The demo generator at a reduced size, marked synthetic like the demo store: 2 benign + 2 malignant classes x
    4 patients x 4 magnifications x 2 images of 48x72 px (128 images)."""
    root = tmp_path_factory.mktemp("suites")
    config = SyntheticConfig(patients_per_class=4, images_per_magnification=2, height=48, width=72,
                             classes=("adenosis", "fibroadenoma", "ductal_carcinoma", "lobular_carcinoma"))
    tree = write_demo_tree(root / "tree", config)
    ingest_breakhis(IngestConfig(root=str(tree), out=str(root / "s.zarr"), workers=1))
    return root / "s.zarr"


def _suite(name, store, out, *extra):
    res = runner.invoke(app, ["suite", name, "--data", str(store), "--quick", "--device", "cpu", "--out", str(out),
                              *extra])
    assert res.exit_code == 0, res.output
    return res


def _check_reports(out, *also: str, quick: bool = True):
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for text in (md, html):
        for needle in ("mean ± std", "n=", "SYNTHETIC", *also):
            assert needle in text, needle
    assert ("QUICK MODE" in md) == quick
    return md, json.loads((out / "results.json").read_text())


def test_list_names_every_suite():
    res = runner.invoke(app, ["suite", "--list"])
    assert res.exit_code == 0
    for name in ("magnification-transfer", "fusion-inputs", "transfer"):
        assert f"{name}: " in res.output


def test_too_many_folds_is_a_clear_cli_error(synthetic_store, tmp_path):
    res = runner.invoke(app, ["suite", "fusion-inputs", "--data", str(synthetic_store), "--folds", "500", "--quick",
                              "--device", "cpu", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "500-fold cross-validation needs at least 500 patients" in res.output
    res = runner.invoke(app, ["suite", "nope"])
    assert res.exit_code == 1 and "unknown suite 'nope'" in res.output


def test_magnification_transfer_suite(synthetic_store, tmp_path):
    out = tmp_path / "mt"
    _suite("magnification-transfer", synthetic_store, out, "--folds", "2", "--image-size", "32")
    md, results = _check_reports(out, "deit_small", "swin_tiny", "Directional asymmetry")
    assert len(results["cells"]) == 2 * 3 * 3 * 2  # models x train x test x folds
    assert {c["fold"] for c in results["cells"]} == {0, 1}
    assert "Efficiency" in md and "GFLOPs" in md and len(results["efficiency"]) == 2
    assert [t["model"] for t in results["tsne"]] == ["deit_small", "swin_tiny"]
    assert (out / results["tsne"][0]["file"]).is_file() and "tsne.png" in md
    assert "patient-level 2-fold cross-validation" in md
    # every fold's runs were tested on their own fold: the test patients of the two folds are disjoint
    tests = [set(json.loads((out / "deit_small" / "100X" / f"fold{k}-seed0" / "splits.json").read_text())["test"]
                 ["patients"]) for k in (0, 1)]
    assert tests[0] and not tests[0] & tests[1]
    rebuilt = runner.invoke(app, ["report", str(out)])  # the report rebuilds from results.json alone
    assert rebuilt.exit_code == 0 and "html report:" in rebuilt.output, rebuilt.output


def test_suite_without_name_is_magnification_transfer(synthetic_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no --out: runs/suites/NAME under the current folder
    out = tmp_path / "runs" / "suites" / "magnification-transfer"
    res = runner.invoke(app, ["suite", "--model", "tiny_cnn_test", "--data", str(synthetic_store), "--epochs", "1",
                              "--max-steps", "2", "--batch-size", "8", "--image-size", "32", "--device", "cpu",
                              "--task", "binary"])
    assert res.exit_code == 0, res.output
    for mag in ("100X", "400X", "mixed"):  # make demo reads <out>/<model>/<magnification>/best.pt
        assert (out / "tiny_cnn_test" / mag / "best.pt").is_file()
    md, results = _check_reports(out, "binary task", quick=False)
    assert results["suite"] == "magnification-transfer" and "the store's own patient-level" in md
    assert "± n/a (n=1;" in md  # one run per cell, said so


def test_fusion_inputs_suite_over_seeds(synthetic_store, tmp_path):
    out = tmp_path / "fusion"
    _suite("fusion-inputs", synthetic_store, out, "--folds", "2", "--seeds", "2", "--task", "binary",
           "--image-size", "32")
    md, results = _check_reports(out, "Accuracy vs number of inputs", "40X + 100X + 200X + 400X",
                                 "both, as in the paper; this double-weights rare classes")
    assert sorted({c["k"] for c in results["cells"]}) == [1, 2, 3, 4]
    assert len(results["cells"]) == 4 * 2 * 2 and {c["seed"] for c in results["cells"]} == {0, 1}
    assert "(n=4;" in md  # 2 folds x 2 seeds per cell
    config = json.loads((out / "k2" / "fold0-seed1" / "config.json").read_text())
    assert config["sampler"] == "weighted" and config["augment"]["erasing"] > 0 and config["task"] == "binary"
    assert config["class_weighting"] == "loss"
    assert (out / "inputs_binary.png").is_file()


def test_transfer_suite_both_tasks(synthetic_store, tmp_path):
    out = tmp_path / "transfer"
    _suite("transfer", synthetic_store, out, "--folds", "2", "--model", "resnet18", "--image-size", "32")
    md, results = _check_reports(out, "binary task", "subtype task", "plain grid", "Grad-CAM")
    assert results["tasks"] == ["binary", "subtype"]
    assert {(c["task"], c["unfreeze"]) for c in results["cells"]} == {
        (t, s) for t in ("binary", "subtype") for s in ("head", "last_block", "full")}
    assert len(results["search"]) == 2 * 3 * 2  # tasks x schedules x quick grid, on the first fold
    assert sum(s.get("chosen", False) for s in results["search"]) == 6
    for task in ("binary", "subtype"):
        assert results["best"][task]["model"] == "resnet18" and results["gradcam"][task]
        assert all((out / g["file"]).is_file() for g in results["gradcam"][task])
    frozen = json.loads(next((out / "binary" / "resnet18" / "head").glob("lr*/fold1-seed0/config.json")).read_text())
    assert frozen["unfreeze"] == "head" and frozen["folds"] == 2 and frozen["fold"] == 1


def test_blur_and_erasing_are_per_sample_and_off_by_default():
    from pipelines.data.augment import AugmentConfig, GpuAugment

    batch = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    plain = GpuAugment(AugmentConfig(), 32, seed=0)(batch)
    again = GpuAugment(AugmentConfig(blur=0.0, erasing=0.0), 32, seed=0)(batch)
    assert torch.equal(plain, again)  # no extra random draws when off: old seeds reproduce
    erased = GpuAugment(AugmentConfig.none(), 32, seed=0)
    erased.config = AugmentConfig(**{**vars(AugmentConfig.none()), "erasing": 1.0})
    out = erased(batch)
    zeros = (out == 0).all(1).flatten(1).sum(1)
    assert (zeros > 0).all() and len(set(zeros.tolist())) > 1  # one rectangle each, of its own size
    blurred = GpuAugment(AugmentConfig(**{**vars(AugmentConfig.none()), "blur": 1.0, "blur_sigma": (1.5, 1.5)}),
                         32, seed=0)(batch)
    sharp = GpuAugment(AugmentConfig.none(), 32, seed=0)(batch)
    assert blurred.diff(dim=-1).abs().mean() < 0.6 * sharp.diff(dim=-1).abs().mean()
    with pytest.raises(ValueError, match="erasing"):
        AugmentConfig(erasing=1.5)


def test_weighted_sampler_balances_classes():
    from pipelines.data.base import balanced_weights, epoch_order
    from pipelines.data.loaders import DeviceLoader

    labels = np.array([0] * 90 + [1] * 10)
    weights = balanced_weights(labels)
    order = np.concatenate([epoch_order(100, seed=0, epoch=e, shuffle=True, drop_last=True, weights=weights)
                            for e in range(20)])
    assert abs(np.mean(labels[order] == 1) - 0.5) < 0.05
    loader = DeviceLoader(torch.zeros(100, 3, 8, 8, dtype=torch.uint8), labels, np.arange(100), batch_size=10,
                          image_size=8, seed=0)
    loader.sample_weights = weights
    seen = torch.cat([y for _, y, _ in loader])
    assert 0.3 < seen.float().mean().item() < 0.7


def test_report_header_names_classes_missing_from_test_folds():
    from benchmark.suites.report import header

    lines = "\n".join(header({"tasks": ["subtype"], "classes": {"subtype": ["phyllodes_tumor"]},
                               "store": "s.zarr", "study": {"folds": 5},
                               "fold_gaps": {"subtype": {"phyllodes_tumor": [3, 4]}}}))
    assert "phyllodes_tumor (subtype): folds 3, 4" in lines and "never split" in lines


def test_tsne_figures_are_redone_for_another_checkpoint(tmp_path, monkeypatch):
    import benchmark.suites.magnification_transfer as explain_mod  # the name as the suite calls it
    from benchmark.suites import StudyConfig
    from benchmark.suites.base import SuiteContext
    from benchmark.suites.magnification_transfer import _tsne

    study = StudyConfig(suite="magnification-transfer", out=str(tmp_path / "mt"), device="cpu")
    calls = []

    def fake_explain(config):
        calls.append(config.checkpoint)
        info = {"checkpoint": config.checkpoint, "figures": []}
        (tmp_path / "mt" / "tsne" / "subtype" / "m").mkdir(parents=True, exist_ok=True)
        (tmp_path / "mt" / "tsne" / "subtype" / "m" / "explain.json").write_text(json.dumps(info))
        return info

    monkeypatch.setattr(explain_mod, "explain", fake_explain)
    rows = [{"train": "mixed", "task": "subtype", "model": "m", "run_dir": str(tmp_path / "old"), "fold": 0,
             "seed": 0}]
    _tsne(study, SuiteContext(study), rows)
    _tsne(study, SuiteContext(study), rows)  # same checkpoint: explain.json is reused
    assert calls == [str(tmp_path / "old" / "best.pt")]
    _tsne(study, SuiteContext(study), [{**rows[0], "run_dir": str(tmp_path / "new")}])
    assert calls[-1] == str(tmp_path / "new" / "best.pt") and len(calls) == 2
