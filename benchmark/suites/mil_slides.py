"""``mil-slides``: the gigapixel attention-MIL study on a slide store, over slide-level folds x seeds.

Grid: attention (``abmil`` simple / ``abmil_gated`` gated, Ilse et al. 2018) x tile feature extractor (ResNet-50,
ResNet-34, ViT-S/16; from the seeded random initialisation unless the store's features were cached from local
weights) x loss (cross-entropy, focal). Each cell is trained on every fold x seed of a patient-grouped,
label-stratified k-fold split of the slides (:func:`pipelines.training.mil.fold_slides`) and scored on its test fold:
macro-F1, accuracy and balanced accuracy, mean ± std with n (runs; test patients / slides). The best cell (highest
mean *validation* macro-F1, so the choice does not peek at the test folds) is then run as an ensemble of its
fold x seed checkpoints (mean of the class probabilities,
:func:`pipelines.training.mil.infer_mil`) over every slide: ``ensemble/predictions.csv`` and attention heatmaps
(``.npy`` + PNG over the thumbnail), shown in the report. Every slide was in the training set of some of those
checkpoints, so the ensemble's predictions are a deployment demonstration, not an estimate: the fold table is.

Data: ``--data`` is a slide store (``histo-ingest tile``, with or without ``--masks``) whose ``labels.csv``
(``slide_id,label[,patient]``) sits in the store folder, beside it, or in the folder of the slides it was tiled
from; without ``--data``, the embedded synthetic demo slides (``--quick``: six small ones at 10x, 64 px tiles).
``--model`` picks attention variants and/or extractors (``--model abmil_gated --model vit_small``);
``--weights-dir DIR`` gives extractors local weights (``DIR/resnet50.safetensors`` ...; the others stay random).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.suites.base import SUITES, SuiteContext, register_suite
from benchmark.suites.figures import grouped_bars
from benchmark.suites.report import write_suite_report
from benchmark.suites.study import StudyConfig, weights_file
from benchmark.suites.tables import format_cell, mean_std_table, summarize
from histo_bench.device import resolve_device
from histo_bench.errors import ConfigError
from histo_bench.files import atomic_write_json
from histo_bench.markdown import markdown_table
from ingest.slide_store import SlideStore
from ingest.synthetic.demo import demo_slide_store
from ingest.synthetic.slide import is_synthetic_slide
from pipelines.data.tasks import describe_task
from pipelines.training.mil import MILConfig, infer_mil, train_mil
from pipelines.training.slide_runs import read_labels

log = logging.getLogger(__name__)

NAME = "mil-slides"
ATTENTION: dict[str, str] = {"abmil": "simple", "abmil_gated": "gated"}
EXTRACTORS: tuple[str, ...] = ("resnet50", "resnet34", "vit_small")
QUICK_EXTRACTORS: tuple[str, ...] = ("resnet34", "vit_small")
LOSSES: tuple[str, ...] = ("ce", "focal")
#: MIL training settings: full study / ``--quick`` (``--epochs`` and ``--lr`` override).
SETTINGS: dict[bool, dict[str, Any]] = {False: {"epochs": 50, "max_patches": 512, "patience": 10},
                                        True: {"epochs": 3, "max_patches": 16, "patience": 3}}
#: Folds when ``--folds`` is 0 (slide stores have no split of their own); fewer when a label has fewer patients.
DEFAULT_FOLDS = 3
_METRICS = {"macro_f1": "macro-F1", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}
_MAX_HEATMAPS = 6


def find_labels(store: Path) -> Path:
    """The ``labels.csv`` of a slide store: in it, beside it, or in the folder its slides were tiled from."""

    candidates = [store / "labels.csv", store.parent / "labels.csv"]
    try:
        slides = SlideStore(store)
        sources = {Path(slides.slide(s).attrs.get("source", "")).parent for s in slides.slide_ids()}
        candidates += [p / "labels.csv" for p in sorted(sources) if str(p) not in ("", ".")]
    except Exception as exc:  # an unreadable store is reported by the caller with its own error
        log.debug("cannot list the slide sources of %s: %s", store, exc)
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"{store}: no labels.csv (slide_id,label) found; looked in "
                     f"{', '.join(str(c) for c in dict.fromkeys(candidates))}")


def _data(study: StudyConfig) -> tuple[Path, Path, str, str]:
    """(slide store, labels CSV, scale, data kind: generated demo slides or the user's)."""

    if study.store:
        store = Path(study.store)
        ids = SlideStore(store).slide_ids()
        if not ids:
            raise ConfigError(f"{store}: the slide store holds no slides")
        scale = next(iter(SlideStore(store).slide(ids[0]).attrs["scales"]))
        return store, find_labels(store), scale, "user"
    store, labels, scale = demo_slide_store(quick=study.quick)
    return store, labels, scale, "demo"


def _origin(store: Path, kind: str) -> dict[str, Any]:
    """What the slides are: the generated demo slides, synthetic slides found in a user store, or the user's."""

    slides = SlideStore(store)
    sources = {s: slides.slide(s).attrs.get("source", "") for s in slides.slide_ids()}
    verdict = {s: is_synthetic_slide(p) for s, p in sources.items()}
    tissue = [slides.slide(s).attrs.get("tissue_source", "auto") for s in slides.slide_ids()]
    masks = sum(t != "auto" for t in tissue)
    common = {"tissue": f"automatic detection on {len(tissue) - masks} slide(s), user masks on {masks}"}
    if kind == "demo" or (verdict and all(verdict.values())):
        return {"kind": "synthetic", "generator": "histo-bench ingest.synthetic.slide", **common}
    unknown = sorted(s for s, v in verdict.items() if v is None)
    synthetic = sorted(s for s, v in verdict.items() if v)
    return {"kind": "user", "root": str(store), "synthetic_slides": synthetic, "unknown_slides": unknown, **common}


def _grid(study: StudyConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(attention models, extractors) from ``--model`` (either kind, or none for the defaults)."""
    unknown = [m for m in study.models if m not in ATTENTION and m not in EXTRACTORS]
    if unknown:
        raise ConfigError(f"--model {', '.join(unknown)}: mil-slides takes attention models ({', '.join(ATTENTION)}) "
                         f"and/or tile extractors ({', '.join(EXTRACTORS)})")
    models = tuple(m for m in study.models if m in ATTENTION) or tuple(ATTENTION)
    extractors = tuple(m for m in study.models if m in EXTRACTORS) or (QUICK_EXTRACTORS if study.quick
                                                                       else EXTRACTORS)
    return models, extractors


def _extractor_weights(study: StudyConfig, extractor: str) -> str | None:
    """``--weights-dir``'s ``<extractor>.safetensors`` (/.pth/.pt/.bin) when there is one, else None (random)."""
    if not study.weights_dir:
        return None
    try:
        return str(weights_file(study.weights_dir, extractor))
    except ValueError:
        log.info("no %s weights in %s: that extractor starts from its seeded random initialisation", extractor,
                 study.weights_dir)
        return None


def _folds(study: StudyConfig, labels: dict[str, str], patients: dict[str, str]) -> int:
    """``--folds``, or :data:`DEFAULT_FOLDS` capped by the patients of the rarest label."""
    if study.folds:
        return study.folds
    per_label: dict[str, set[str]] = {}
    for s, lab in labels.items():
        per_label.setdefault(lab, set()).add(patients[s])
    fewest = min(len(p) for p in per_label.values())
    if fewest < 2:
        raise ConfigError(f"a label has {fewest} patient(s); slide-level cross-validation needs 2 or more per label")
    return min(DEFAULT_FOLDS, fewest)


def _protocol(study: StudyConfig) -> str:
    seeds = ", ".join(str(s) for _, s in study.runs()[:study.seeds])
    return (f"slide-level {study.folds}-fold cross-validation (grouped by patient, stratified by slide label, split "
            f"seed {study.split_seed}; val = a stratified share of the other folds' slides) x {study.seeds} seed(s) "
            f"({seeds}) = {len(study.runs())} run(s) per cell")


def _write_oof(path: Path, rows: list[dict[str, Any]], labels: dict[str, str]) -> None:
    """Out-of-fold predictions of the chosen cell: each slide scored by the model of the fold that tested it."""
    lines = []
    for r in rows:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        classes = summary["classes"]
        for sid, probs in sorted(summary["test_predictions"].items()):
            lines.append({"slide_id": sid, "label": labels[sid], "fold": r["fold"], "seed": r["seed"],
                          "predicted": classes[int(np.argmax(probs))],
                          **{f"p_{c}": p for c, p in zip(classes, probs, strict=True)}})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(lines[0]) if lines else ["slide_id"])
        writer.writeheader()
        writer.writerows(lines)


def _report(suite_dir: Path, results: dict[str, Any]) -> Path:

    cells = results["cells"]
    task = results["tasks"][0]
    what = describe_task(task, results["classes"][task])
    best = results["best"]
    chosen = [r for r in cells if (r["model"], r["extractor"], r["loss"]) == (best["model"], best["extractor"],
                                                                               best["loss"])]
    settings = ", ".join(f"{k} {v}" for k, v in results["settings"].items())
    sections = [
        f"## Protocol\n\n{results['protocol']}. Slides at {results['scale']}; tile features cached in the store; "
        "extractors: " + "; ".join(f"{e}: {w}" for e, w in results.get("extractor_init", {}).items())
        + (" (random features: the extractor comparison checks the pipeline, it does not measure the backbones)"
           if any(str(w).startswith("random") for w in results.get("extractor_init", {}).values()) else "")
        + f"; MIL training: "
        f"{settings}, early stopping on validation macro-F1. In the cells below n counts runs, p test patients and "
        "i test **slides**.",
        f"## Test scores per attention x extractor x loss, {what}\n\n"
        + mean_std_table(cells, ["attention", "extractor", "loss"], list(_METRICS), labels=_METRICS),
        "## Simple vs gated attention (pooled over extractors and losses)\n\n"
        + mean_std_table(cells, ["attention"], list(_METRICS), labels=_METRICS)
        + "\n\nPooled cells mix configurations: n counts every run in them.",
        f"## Ensemble\n\nChosen by mean validation macro-F1 (not test): **{best['attention']} attention, "
        f"{best['extractor']}, {best['loss']} loss** - test macro-F1 {format_cell(summarize(chosen, 'macro_f1'))}. "
        f"Its {len(best['checkpoints'])} fold x seed checkpoints form an ensemble (mean of the class "
        f"probabilities) run on every slide: `{results['ensemble']['predictions']}` (class probabilities per slide) "
        "and attention heatmaps (`.npy` + PNG). Every slide trained some of these checkpoints, so the ensemble's "
        "predictions are not an accuracy estimate; `oof_predictions.csv` holds each slide's out-of-fold prediction."
        "\n\n" + _predictions_table(suite_dir / results["ensemble"]["predictions"])]
    figures: list[tuple[str, str]] = []
    groups = [f"{e}\n{loss}" for e in results["extractors"] for loss in results["losses"]]
    series = {}
    for model in results["models"]:
        stats = [summarize([r for r in cells if r["model"] == model and r["extractor"] == e and r["loss"] == loss],
                           "macro_f1") for e in results["extractors"] for loss in results["losses"]]
        series[f"{ATTENTION[model]} attention"] = ([np.nan if s["mean"] is None else s["mean"] for s in stats],
                                                   [np.nan if s["std"] is None else s["std"] for s in stats])
    grouped_bars(groups, series, suite_dir / "mil_grid.png", "test macro-F1", "attention MIL: macro-F1 per cell")
    figures.append(("mil_grid.png", f"Test macro-F1 per extractor x loss, simple vs gated attention ({what}); error "
                    "bars ± std over folds x seeds."))
    for rel in results["ensemble"]["heatmaps"][:_MAX_HEATMAPS]:
        figures.append((rel, f"{Path(rel).stem}: ensemble attention over the thumbnail (red = most attended)"))
    return write_suite_report(suite_dir, results, "Attention MIL on whole-slide images", sections, figures)


def _predictions_table(path: Path) -> str:
    if not path.is_file():
        return "(no predictions file)"
    rows = list(csv.DictReader(path.open()))
    if not rows:
        return "(no slide had tiles at this scale)"
    cols = list(rows[0])
    return markdown_table(cols, [[r[c] for c in cols] for r in rows])


@register_suite(NAME, "attention MIL on slides: simple vs gated attention x ResNet-50 / ResNet-34 / ViT features x "
                      "CE / focal loss, slide-level folds, ensemble predictions + attention heatmaps",
                report=_report, tasks=("binary",), models=(*ATTENTION, *EXTRACTORS))
def run(study: StudyConfig, ctx: SuiteContext) -> dict[str, Any]:

    store, labels_csv, scale, kind = _data(study)
    labels, patients = read_labels(labels_csv, SlideStore(store).slide_ids())
    study = replace(study, folds=_folds(study, labels, patients))
    classes = sorted(set(labels.values()))
    task = "binary" if classes == ["benign", "malignant"] else "subtype"
    if study.tasks and study.tasks != (task,):
        log.warning("--task %s ignored: the slide labels (%s) make this a %s task", ",".join(study.tasks),
                    ", ".join(classes), task)
    models, extractors = _grid(study)
    device = resolve_device(study.device)
    settings = {**SETTINGS[study.quick], **({"epochs": study.epochs} if study.epochs else {}),
                **({"lr": study.lr} if study.lr else {})}
    rows: list[dict[str, Any]] = []
    extractor_init = {e: _extractor_weights(study, e) for e in extractors}
    for extractor in extractors:
        for model in models:
            for loss in LOSSES:
                for fold, seed in study.runs():
                    ctx.announce(f"{ATTENTION[model]} attention, {extractor}, {loss} loss, fold {fold}, seed {seed}")
                    out = study.run_dir(extractor, model, loss, fold=fold, seed=seed)
                    summary = train_mil(MILConfig(store=str(store), labels=str(labels_csv), scale=scale, model=model,
                                                  extractor=extractor, extractor_weights=extractor_init[extractor],
                                                  loss=loss, folds=study.folds, fold=fold,
                                                  split_seed=study.split_seed, seed=seed, device=device, out=out,
                                                  precision=study.precision, **settings))
                    test = summary["test"]
                    rows.append({"attention": ATTENTION[model], "model": model, "extractor": extractor, "loss": loss,
                                 "task": task, "fold": fold, "seed": seed, "test": "slides",
                                 **{k: test[k] for k in _METRICS}, "n_patients": test["n_patients"],
                                 "n_images": test["n_images"], "val_macro_f1": (summary["best_val"] or {}).get(
                                     "macro_f1"), "run_dir": out})
    cells = {(r["model"], r["extractor"], r["loss"]) for r in rows}
    def val_f1(c) -> float:  # a mean of 0.0 is a score; only None (no validation number) ranks last
        mean = summarize([r for r in rows if (r["model"], r["extractor"], r["loss"]) == c], "val_macro_f1")["mean"]
        return -1.0 if mean is None else mean

    best = max(sorted(cells), key=val_f1)
    chosen = [r for r in rows if (r["model"], r["extractor"], r["loss"]) == best]
    ctx.announce(f"ensemble of {len(chosen)} checkpoints ({ATTENTION[best[0]]}, {best[1]}, {best[2]}) on every slide")
    predictions = infer_mil([Path(r["run_dir"]) / "best.pt" for r in chosen], store, study.suite_dir / "ensemble",
                            device=device, labels=labels_csv)
    _write_oof(study.suite_dir / "oof_predictions.csv", chosen, labels)
    origin = _origin(store, kind)
    n_patients = len(set(patients.values()))
    results = {"format": "histo-bench/suite", "suite": NAME, "description": SUITES.get(NAME).description,
               "study": asdict(study), "store": str(store), "labels": str(labels_csv), "scale": scale,
               "origin": origin, "store_counts": {}, "slide_counts": {"slides": len(labels), "patients": n_patients},
               "protocol": _protocol(study), "command": study.command(), "tasks": [task],
               "classes": {task: classes}, "settings": settings, "models": list(models),
               "extractors": list(extractors), "losses": list(LOSSES), "device": device,
               "extractor_init": {e: w or "random initialisation (seeded)" for e, w in extractor_init.items()},
               "best": {"model": best[0], "attention": ATTENTION[best[0]], "extractor": best[1], "loss": best[2],
                        "checkpoints": [str(Path(r["run_dir"]) / "best.pt") for r in chosen]},
               "ensemble": {"predictions": str(predictions.relative_to(study.suite_dir)),
                            "heatmaps": sorted(str(p.relative_to(study.suite_dir))
                                               for p in (study.suite_dir / "ensemble" / "attention").glob("*.png"))},
               "cells": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    study.suite_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study.suite_dir / "results.json", results)
    return results
