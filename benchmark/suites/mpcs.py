"""``mpcs``: the magnification-prior study (Chhipa et al., MPCS): does self-supervised pretraining on same-patient
magnification pairs beat random initialisation when labels are few?

Per fold x seed: MPCS pretraining (:mod:`pipelines.training.mpcs`, NT-Xent on pairs drawn by the ``ordered``, ``fixed``
and ``random`` strategies) on that fold's *train* patients only (never its val / test patients), then, per
magnification, every initialisation is trained on the binary task (benign vs malignant, as in the paper) two ways -
**fine-tuning** (every parameter trains, ``unfreeze=full``) and **linear evaluation** (the encoder is frozen, only
the linear head trains, ``unfreeze=head``) - with **100%** and **20%** of the train patients' labels
(``label_fraction``: a class-stratified patient subset; val and test untouched). The initialisations: the three MPCS
encoders, random initialisation, and ImageNet weights. Every fine-tuning run has the same budget (epochs, steps,
learning rate, batch size); the MPCS rows additionally had their pretraining, which the report states.

ImageNet weights are never downloaded: they come from ``--weights-dir DIR`` (``DIR/<backbone>.safetensors``, e.g.
``resnet50.safetensors``) or ``--pretrained`` (timm's hub cache, offline); without either, that baseline is listed
as skipped with the reason, never faked. Default model ``mpcs_resnet50`` (the paper's); ``--quick`` uses
``mpcs_efficientnet_b0`` at 64 px, one magnification, a few steps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.suites.base import SuiteContext, register_suite
from benchmark.suites.figures import grouped_bars
from benchmark.suites.report import write_suite_report
from benchmark.suites.study import StudyConfig, weights_file
from benchmark.suites.tables import mean_std_table, summarize
from histo_bench.errors import ConfigError
from histo_bench.markdown import markdown_table
from models.mpcs import PAIR_STRATEGIES
from models.registry import MODELS
from pipelines.data.tasks import describe_task
from pipelines.training.mpcs import PretrainConfig, pretrain

log = logging.getLogger(__name__)

NAME = "mpcs"
DEFAULT_MODELS: tuple[str, ...] = ("mpcs_resnet50",)
QUICK_MODELS: tuple[str, ...] = ("mpcs_efficientnet_b0",)
#: Fine-tuning magnifications: one model per magnification, as in the paper (``--quick``: one).
MAGNIFICATIONS: dict[bool, tuple[str, ...]] = {False: ("40X", "100X", "200X", "400X"), True: ("200X",)}
#: Protocol name -> the ``unfreeze`` schedule that implements it.
PROTOCOLS: dict[str, str] = {"fine-tune": "full", "linear": "head"}
LABEL_FRACTIONS: tuple[float, ...] = (1.0, 0.2)
#: Pretraining settings: full study / ``--quick`` (batch size and image size follow the study's).
PRETRAIN: dict[bool, dict[str, Any]] = {False: {"epochs": 20, "max_steps_per_epoch": None},
                                       True: {"epochs": 1, "max_steps_per_epoch": 3}}
_METRICS = {"macro_f1": "macro-F1", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
            "patient_accuracy": "patient accuracy"}
_NO_IMAGENET = ("no ImageNet weights given (--weights-dir DIR with DIR/{backbone}.safetensors, or --pretrained with "
                "timm's cache filled); nothing is downloaded here, so this baseline is skipped, not faked")


def _fraction(f: float) -> str:
    return f"{f * 100:g}%"


def _pretrain(study: StudyConfig, ctx: SuiteContext, model: str, pair: str, task: str, fold: int, seed: int,
              ) -> tuple[Path | None, dict[str, Any]]:
    """Encoder weights of one MPCS pretraining run (skipped when finished) and what to report about it."""

    settings = study.settings()
    config = PretrainConfig(model=model, store=str(study.store_path), pair=pair, seed=seed, device=study.device,
                            precision=study.precision,
                            batch_size=settings.get("batch_size", 32), image_size=settings.get("image_size", 224),
                            folds=study.folds, fold=fold if study.folds else 0, split_seed=study.split_seed,
                            task=task, out=study.run_dir("pretrain", model, pair, fold=fold, seed=seed),
                            **PRETRAIN[study.quick])
    ctx.announce(f"MPCS pretraining {model}, {pair} pairs, fold {fold}, seed {seed}")
    try:
        weights = pretrain(config, progress=None)
    except ValueError as exc:  # e.g. the fixed pair needs 200X and 400X images; OOM / NaN loss propagate
        return None, {"pair": pair, "fold": fold, "seed": seed, "skipped": str(exc)}
    history = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    return weights, {"pair": pair, "fold": fold, "seed": seed,
                     "final_loss": history[-1]["train_loss"] if history else None,
                     "epochs": config.epochs, "steps_per_epoch": config.max_steps_per_epoch, "run_dir": str(
                         config.run_dir), "patients": len(json.loads((config.run_dir / "config.json").read_text())
                                                          .get("patients", []))}


def _imagenet(study: StudyConfig, backbone: str) -> tuple[dict[str, Any] | None, str]:
    """(TrainConfig fields for the ImageNet initialisation or None, what it is / why it is skipped)."""
    if study.weights_dir:
        try:
            path = weights_file(study.weights_dir, backbone)
        except ValueError as exc:
            return None, f"{exc}; this baseline is skipped, not faked"
        return {"weights": str(path), "pretrained": False}, f"local file {path}"
    if study.pretrained:
        from models.registry import build_model
        from models.weights import WeightsError

        try:  # probe the cache once, rather than failing inside the grid
            build_model(backbone, 2, pretrained=True)
        except WeightsError as exc:
            return None, f"{exc}; this baseline is skipped, not faked"
        return {"weights": None, "pretrained": True}, "timm hub cache (offline)"
    return None, _NO_IMAGENET.format(backbone=backbone)


def _report(suite_dir: Path, results: dict[str, Any]) -> Path:

    cells = results["cells"]
    pre = results.get("pretraining", [])
    done = [p for p in pre if "final_loss" in p]
    pre_rows = []
    for pair in dict.fromkeys(p["pair"] for p in pre):
        mine = [p for p in done if p["pair"] == pair]
        losses = [p["final_loss"] for p in mine if p["final_loss"] is not None]
        why = next((p["skipped"] for p in pre if p["pair"] == pair and "skipped" in p), None)
        loss = (f"{np.mean(losses):.3f} ± {np.std(losses, ddof=1):.3f} (n={len(losses)})" if len(losses) > 1 else
                f"{losses[0]:.3f} ± n/a (n=1)" if losses else f"skipped: {why}")
        patients = ", ".join(str(p["patients"]) for p in mine) or "-"
        pre_rows.append([pair, loss, patients])
    pre_table = markdown_table(["pair strategy", "final NT-Xent", "pretraining patients"], pre_rows, "lrr")
    budget = ", ".join(f"{k} {v}" for k, v in results.get("finetune_settings", {}).items()) or "the trainer's defaults"
    sections = [
        "## Protocol\n\n"
        f"Backbone(s) {', '.join(results['models'])}; magnification(s) {', '.join(results['magnifications'])} (one "
        "model per magnification). **MPCS pretraining** on each fold's train patients only (val / test patients are "
        f"never seen): {results['pretrain_settings']['epochs']} epoch(s)"
        + (f", at most {results['pretrain_settings']['max_steps_per_epoch']} steps each"
           if results["pretrain_settings"].get("max_steps_per_epoch") else "")
        + ", NT-Xent on same-patient magnification pairs (ordered: adjacent magnifications; fixed: 200X+400X; "
        "random: any two).\n\n" + pre_table + "\n\n"
        f"**Same budget for every initialisation** in fine-tuning and linear evaluation: {budget}. Fine-tune = every "
        "parameter trains (`unfreeze=full`); linear = the encoder is frozen, only the linear head trains "
        "(`unfreeze=head`). Labels 20% = a seeded, class-stratified fifth of the train patients (val / test "
        f"untouched). ImageNet initialisation: {results['imagenet']}."]
    if results.get("skipped"):
        sections.append("## Skipped\n\n" + "\n".join(f"- {s['init']}: {s['reason']}" for s in results["skipped"]))
    figures: list[tuple[str, str]] = []
    for task in results["tasks"]:
        what = describe_task(task, results["classes"][task])
        rows = [c for c in cells if c["task"] == task]
        inits = list(dict.fromkeys(r["init"] for r in rows))
        backbones = list(dict.fromkeys(r.get("backbone") for r in rows))  # never averaged together
        order = {p: i for i, p in enumerate(PROTOCOLS)}
        rows = sorted(rows, key=lambda r: (backbones.index(r.get("backbone")), order.get(r["protocol"], 9),
                                           -float(r["labels"].rstrip("%")), inits.index(r["init"])))
        for mag in results["magnifications"]:
            mine = [r for r in rows if r["train"] == mag]
            if not mine:
                continue
            sections.append(f"## {mag}: test scores per backbone x protocol x labels x initialisation, {what}\n\n"
                            + mean_std_table(mine, ["backbone", "protocol", "labels", "init"], list(_METRICS),
                                             labels={"labels": "labels used", **_METRICS}))
        groups = [f"{p}\n{lab}" for p in PROTOCOLS for lab in map(_fraction, LABEL_FRACTIONS)]
        series = {}
        for backbone in backbones:
            for init in inits:
                if not any(r.get("backbone") == backbone and r["init"] == init for r in rows):
                    continue  # e.g. ImageNet weights given for one backbone only
                stats = [summarize([r for r in rows if r.get("backbone") == backbone and r["init"] == init
                                    and r["protocol"] == p and r["labels"] == lab], "macro_f1")
                         for p in PROTOCOLS for lab in map(_fraction, LABEL_FRACTIONS)]
                label = init if len(backbones) == 1 else f"{backbone}: {init}"
                series[label] = ([np.nan if s["mean"] is None else s["mean"] for s in stats],
                                 [np.nan if s["std"] is None else s["std"] for s in stats])
        name = f"mpcs_{task}.png"
        grouped_bars(groups, series, suite_dir / name, "test macro-F1", f"MPCS vs baselines ({task})")
        figures.append((name, f"Test macro-F1 per protocol and label fraction, one bar per backbone x initialisation "
                        f"({what}; "
                        "pooled over magnifications); error bars ± std over folds x seeds (x magnifications)."))
    return write_suite_report(suite_dir, results, "MPCS: magnification-prior contrastive pretraining", sections,
                              figures)


@register_suite(NAME, "MPCS pretraining (ordered / fixed / random pairs), then fine-tuning and linear evaluation "
                      "with 100% / 20% labels vs random (and ImageNet, from a local file) initialisation, binary task",
                report=_report, tasks=("binary",), models=DEFAULT_MODELS)
def run(study: StudyConfig, ctx: SuiteContext) -> dict[str, Any]:

    models = study.models_or(QUICK_MODELS if study.quick else DEFAULT_MODELS)
    wrong = [m for m in models if m not in MODELS or MODELS.get(m).family != "mpcs"]
    if wrong:
        raise ConfigError(f"--model {', '.join(wrong)}: the mpcs suite takes MPCS models "
                         f"({', '.join(MODELS.names('mpcs_*'))})")
    tasks = study.tasks_or(("binary",))
    mags = MAGNIFICATIONS[study.quick]
    rows: list[dict[str, Any]] = []
    pretraining: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    imagenet_notes = []
    for model in models:
        backbone = model.removeprefix("mpcs_")
        imagenet, note = _imagenet(study, backbone)
        imagenet_notes.append(f"{backbone}: {note}" if len(models) > 1 else note)
        if imagenet is None:
            skipped.append({"init": f"ImageNet ({backbone})", "reason": note})
        for task in tasks:
            for fold, seed in study.runs():
                inits: dict[str, dict[str, Any]] = {}
                for pair in PAIR_STRATEGIES:
                    weights, info = _pretrain(study, ctx, model, pair, task, fold, seed)
                    pretraining.append({"model": model, "task": task, **info})
                    if weights is not None:
                        inits[f"MPCS {pair}"] = {"weights": str(weights), "pretrained": False}
                    elif not any(s["init"] == f"MPCS {pair}" for s in skipped):
                        skipped.append({"init": f"MPCS {pair}", "reason": info["skipped"]})
                inits["random init"] = {"weights": None, "pretrained": False}
                if imagenet is not None:
                    inits["ImageNet"] = imagenet
                for mag in mags:
                    for init, fields in inits.items():
                        for protocol, unfreeze in PROTOCOLS.items():
                            for fraction in LABEL_FRACTIONS:
                                slug = init.lower().replace(" ", "-")
                                config = study.train_config(
                                    model=backbone, task=task, train_magnification=mag, fold=fold, seed=seed,
                                    unfreeze=unfreeze, label_fraction=fraction, **fields,
                                    out=study.run_dir(task, backbone, mag, slug, protocol, _fraction(fraction),
                                                      fold=fold, seed=seed))
                                rows += ctx.train_and_test(config, (mag,), init=init, protocol=protocol,
                                                           labels=_fraction(fraction), backbone=backbone)
    settings = study.settings()
    return ctx.save(rows, models=list(models), magnifications=list(mags), pretraining=pretraining,
                    skipped=skipped, imagenet="; ".join(imagenet_notes), protocols=PROTOCOLS,
                    label_fractions=list(LABEL_FRACTIONS), pretrain_settings=PRETRAIN[study.quick],
                    finetune_settings=settings)
