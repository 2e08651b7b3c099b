"""The suite framework: one command per seed study (``histo-bench suite NAME``), repeated over folds x seeds.

A suite is a function registered with :func:`register_suite`; it gets the
:class:`~benchmark.suites.study.StudyConfig` (data, task(s), folds, seeds, quick mode, overrides) and a
:class:`SuiteContext` whose helpers do the common work::

    @register_suite("my-study", "what it answers", report=my_report, models=("resnet50",))
    def run(study: StudyConfig, ctx: SuiteContext) -> dict:
        rows = []
        for task in study.tasks_or(("subtype",)):
            for model in study.models_or(("resnet50",)):
                for fold, seed in study.runs():
                    config = study.train_config(model=model, task=task, fold=fold, seed=seed,
                                                out=study.run_dir(task, model, fold=fold, seed=seed))
                    rows += ctx.train_and_test(config, tests=("100X", "400X"))
        return ctx.save(rows)                         # results.json in the suite directory

    def my_report(suite_dir: Path, results: dict) -> Path:
        body = [mean_std_table(results["cells"], ["task", "model", "test"], ["macro_f1", "accuracy"])]
        return write_suite_report(suite_dir, results, "My study", body, figures=[])

Every run is an ordinary resumable run directory under the suite directory (``runs/suites/<name>`` by default):
a finished run is not retrained and its test metrics are cached in ``test_metrics.json``, so an interrupted suite
resumes where it stopped. ``results.json`` holds one row per (run, test set) and what the data was; the report
(``report.md`` + ``report.html``) is built from it alone, so ``histo-bench report SUITE_DIR`` rebuilds it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmark.suites.report import write_suite_report
from benchmark.suites.study import StudyConfig
from benchmark.suites.tables import CELL_NOTE, aggregate, format_cell, mean_std_matrix, mean_std_table, summarize
from histo_bench.device import autocast_dtype, resolve_device
from histo_bench.files import atomic_write_json
from histo_bench.registry import Registry
from ingest.store import ImageStore
from pipelines.data.base import DataConfig
from pipelines.data.tasks import task_classes
from pipelines.training.checkpoint import IMAGE_KINDS, load_checkpoint
from pipelines.training.classifier import evaluate_split, train
from pipelines.training.cv import classes_missing_from_test, store_for_run

__all__ = ["CELL_NOTE", "SUITES", "SuiteContext", "SuiteSpec", "aggregate", "format_cell", "load_results",
           "mean_std_matrix", "mean_std_table", "rebuild_report", "register_suite", "run_suite", "summarize",
           "write_suite_report"]

log = logging.getLogger(__name__)

RESULTS_FORMAT = "histo-bench/suite"
#: ``announce(message)``: one line per run, for the CLI.
Announce = Callable[[str], None]


@dataclass
class SuiteContext:
    """What a running suite shares: the study, the CLI's callbacks, and the run / evaluate / save helpers."""

    study: StudyConfig
    on_run: Announce | None = None
    progress: Callable[[int, int, int, float], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def announce(self, message: str) -> None:
        # the CLI's on_run prints the line itself: logged at INFO as well, it would show twice
        log.log(logging.DEBUG if self.on_run else logging.INFO, "%s: %s", self.study.suite, message)
        if self.on_run:
            self.on_run(message)

    def train(self, config):
        """``pipelines.training.classifier.train(config)`` (skipped when finished, resumed when interrupted); a
        finished run's
        ``last.pt`` is deleted unless ``study.keep_last``."""

        result = train(config, progress=self.progress)
        if not self.study.keep_last:
            (result.run_dir / "last.pt").unlink(missing_ok=True)
        return result

    def train_and_test(self, config, tests: Sequence[str], **labels: Any) -> list[dict[str, Any]]:
        """Train ``config`` (skipped when finished, resumed when interrupted) and score its best checkpoint on the
        test split of its store view at each of ``tests`` (magnifications; for the fusion model, its input list).
        One row per test: ``labels`` (default model / train / task / fold / seed) + the metrics + n."""
        labels = {"model": config.model, "train": config.train_magnification, "task": config.task,
                  "fold": config.fold, "seed": config.seed, **labels}
        self.announce(", ".join(f"{k} {v}" for k, v in labels.items()))
        result = self.train(config)
        cache = result.run_dir / "test_metrics.json"
        if not result.already_complete and cache.exists():
            cache.unlink()  # retrained: old test numbers are stale
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        missing = [t for t in tests if t not in cached]
        if missing:
            cached.update(_evaluate(result.run_dir / "best.pt", missing))
            atomic_write_json(cache, cached)
        return [{**labels, "test": t, **cached[t], "val_macro_f1": (result.best_val or {}).get("macro_f1"),
                 "best_epoch": result.best_epoch, "run_dir": str(result.run_dir)} for t in tests]

    def save(self, rows: list[dict[str, Any]], *, data: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Write ``results.json`` (rows as ``cells``, the study, the data it used, ``extra``) and return it.

        ``data`` describes the data for suites that do not train on an image store (e.g. slide stores): ``store``
        (path), ``origin`` (``{"kind": "synthetic", ...}`` makes the report say SYNTHETIC), ``store_counts``
        (``images``, ``patients``) and ``classes`` (task -> class names); default: read from ``study.store_path``.
        """
        tasks = list(dict.fromkeys(r["task"] for r in rows)) or list(self.study.tasks)
        spec = SUITES.get(self.study.suite)
        if data is None and self.study.folds:
            extra = {"fold_gaps": fold_gaps(self.study, tasks), **extra}
        results = {"format": RESULTS_FORMAT, "suite": self.study.suite, "description": spec.description,
                   "study": asdict(self.study), **(data or image_store_data(self.study.store_path, tasks)),
                   "protocol": self.study.protocol(), "command": self.study.command(), "tasks": tasks,
                   "settings": self.study.settings(), **self.extra, **extra, "cells": rows,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.study.suite_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.study.suite_dir / "results.json", results)
        return results


def fold_gaps(study: StudyConfig, tasks: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """task -> class -> folds whose test set lacks that class (classes with fewer patients than folds)."""

    store = ImageStore(study.store_path)
    return {t: gaps for t in tasks if (gaps := classes_missing_from_test(store, study.folds, study.split_seed, t))}


def image_store_data(path: str | Path, tasks: Sequence[str]) -> dict[str, Any]:
    """What ``results.json`` says about an image store: path, origin, size and each task's classes."""

    store = ImageStore(path)
    return {"store": str(store.path), "origin": store.attrs.get("origin", {}),
            "store_counts": {"images": len(store), "patients": len(set(store.patient.tolist()))},
            "classes": {t: list(task_classes(store, t)) for t in tasks}}


def _evaluate(checkpoint: Path, tests: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Test-split metrics of a checkpoint on its own store view (its folds) at each of ``tests``."""

    ckpt = load_checkpoint(checkpoint, IMAGE_KINDS, "cpu", "a suite")
    saved, family = ckpt.config, ckpt.kind
    device = resolve_device(saved.get("device", "auto"))
    net = ckpt.build(device)
    store = store_for_run(saved)
    data_config = DataConfig(image_size=saved["image_size"], load_size=saved["load_size"],
                             batch_size=saved["batch_size"], loader=saved["loader"], task=saved.get("task", "subtype"))
    amp = autocast_dtype(saved.get("precision", "auto"), device)
    out = {}
    for test in tests:
        m = evaluate_split(net, store, "test", test, data_config, device, amp, family)
        out[test] = {"macro_f1": m.macro_f1, "accuracy": m.accuracy, "balanced_accuracy": m.balanced_accuracy,
                     "patient_accuracy": m.patient_accuracy, "n_images": m.n_images, "n_patients": m.n_patients,
                     "per_class": m.per_class, "confusion": m.confusion}
    return out


# -- registry --------------------------------------------------------------------------------------------------------

SuiteRun = Callable[[StudyConfig, SuiteContext], dict]
SuiteReport = Callable[[Path, dict], Path]


@dataclass(frozen=True)
class SuiteSpec:
    """One registered suite: ``run(study, ctx) -> results`` (saved with ``ctx.save``) and ``report(suite_dir,
    results) -> report.md path`` (also writes report.html); default tasks / models say what an empty
    ``StudyConfig.tasks`` / ``models`` means, for ``--list``."""

    name: str
    description: str
    run: SuiteRun
    report: SuiteReport
    tasks: tuple[str, ...] = ("subtype",)
    models: tuple[str, ...] = ()


SUITES: Registry[SuiteSpec] = Registry("suite")


def register_suite(name: str, description: str, *, report: SuiteReport, tasks: Sequence[str] = ("subtype",),
                   models: Sequence[str] = ()) -> Callable[[SuiteRun], SuiteRun]:
    """Register the decorated ``run(study, ctx)`` as suite ``name`` with its ``report`` function."""
    def decorator(fn: SuiteRun) -> SuiteRun:
        SUITES.register(name)(SuiteSpec(name, description, fn, report, tuple(tasks), tuple(models)))
        return fn

    return decorator


@dataclass
class SuiteOutcome:
    """What :func:`run_suite` produced."""

    results: dict[str, Any]
    report_md: Path
    report_html: Path


def run_suite(study: StudyConfig, on_run: Announce | None = None, progress=None) -> SuiteOutcome:
    """Run (or resume) the suite ``study.suite`` and write its report."""
    spec = SUITES.get(study.suite)
    study.suite_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ctx = SuiteContext(study, on_run, progress)
    results = spec.run(study, ctx)
    md = spec.report(study.suite_dir, results)
    log.info("suite %s done in %.0fs: %s", study.suite, time.perf_counter() - t0, md)
    return SuiteOutcome(results, md, study.suite_dir / "report.html")


def load_results(suite_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(suite_dir) / "results.json").read_text())


def is_suite_results(suite_dir: str | Path) -> bool:
    """True when ``suite_dir/results.json`` was written by this framework (not by a pre-suites ``histo-bench
    suite``: ``histo-bench report`` refuses those with one line)."""
    try:
        return load_results(suite_dir).get("format") == RESULTS_FORMAT
    except (OSError, ValueError):
        return False


def rebuild_report(suite_dir: str | Path) -> Path:
    """Rewrite ``report.md`` + ``report.html`` of a suite directory from its ``results.json``."""
    results = load_results(suite_dir)
    return SUITES.get(results["suite"]).report(Path(suite_dir), results)
