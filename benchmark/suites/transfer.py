"""``transfer``: the transfer-learning study: ResNet-50 / DenseNet-121 / ConvNeXt-V2-T on the binary and subtype
tasks, three layer-unfreezing schedules, a small learning-rate grid, Grad-CAM of the best model.

Per (task, model, schedule) — schedules ``head`` (classifier only), ``last_block`` (last stage + head) and ``full``
(:mod:`pipelines.training.unfreeze`) — the learning rate is chosen by a **plain grid** (:data:`LR_GRID`; weight decay
fixed
at 0.05) on the *validation* split of the first fold and seed only, by validation macro-F1; the chosen rate is then
trained on every fold x seed and scored on the test split (all magnifications: the magnification-independent
protocol). Why a plain grid and not Optuna: the space is one dimension of three values, so a sampler has nothing to
learn; a grid is exhaustive, reproducible run for run, resumable through the run directories, and needs no extra
dependency. The best configuration per task (highest mean validation macro-F1) is explained with Grad-CAM
(``histo-bench explain`` on its first checkpoint). ``--lr`` replaces the grid by one rate.

Without ``--pretrained`` (timm hub cache) or ``--weights-dir`` (local ``<model>.safetensors``/``.pth``) the
backbones start from random weights, so ``head`` and ``last_block`` train on random features: the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.suites.base import SuiteContext, register_suite
from benchmark.suites.figures import grouped_bars
from benchmark.suites.report import write_suite_report
from benchmark.suites.study import StudyConfig
from benchmark.suites.tables import format_cell, mean_std_table, summarize
from histo_bench.markdown import markdown_table
from pipelines.data.tasks import describe_task
from pipelines.explain.run import ExplainConfig, explain

NAME = "transfer"
DEFAULT_MODELS: tuple[str, ...] = ("resnet50", "densenet121", "convnextv2_tiny")
SCHEDULES: tuple[str, ...] = ("head", "last_block", "full")
LR_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
QUICK_LR_GRID: tuple[float, ...] = (3e-4, 1e-3)

_METRICS = {"macro_f1": "macro-F1", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
            "patient_accuracy": "patient accuracy"}


def _grid(study: StudyConfig) -> tuple[float, ...]:
    if study.lr is not None:
        return (study.lr,)
    return QUICK_LR_GRID if study.quick else LR_GRID


def _report(suite_dir: Path, results: dict[str, Any]) -> Path:

    cells, search = results["cells"], results.get("search", [])
    init = results.get("init", "random")
    sections = [f"## Protocol\n\nModels {', '.join(results.get('models', []))}; schedules "
                f"{', '.join(SCHEDULES)}; trained and tested on all magnifications together. Learning rate: plain grid "
                f"{', '.join(f'{lr:g}' for lr in results.get('grid', []))} (weight decay 0.05) on the validation split "
                "of the first fold and seed, chosen by validation macro-F1; then every fold x seed with it. A plain "
                "grid, not Optuna: one dimension of a few values leaves a sampler nothing to learn, and a grid is "
                "exhaustive, reproducible and resumable without another dependency.\n\n"
                + (f"**Initialisation:** {init}." if init != "random" else
                   "**Initialisation: random (from scratch)** - no pretrained weights were given (--pretrained / "
                   "--weights-dir), so `head` and `last_block` train on random features; the schedules are only "
                   "comparable as transfer learning with pretrained weights.")]
    figures = []
    for task in results["tasks"]:
        what = describe_task(task, results["classes"][task])
        grid_rows = [s for s in search if s["task"] == task]
        if grid_rows:
            lrs = sorted(dict.fromkeys(s["lr"] for s in grid_rows))
            body = []
            for key in dict.fromkeys((s["model"], s["unfreeze"]) for s in grid_rows):
                mine = [s for s in grid_rows if (s["model"], s["unfreeze"]) == key]
                vals = [format_cell(summarize([s for s in mine if s["lr"] == lr], "val_macro_f1")) for lr in lrs]
                chosen = next((s["lr"] for s in mine if s.get("chosen")), None)
                body.append([*key, *vals, f"{chosen:g}"])
            table = markdown_table(["model", "schedule", *(f"lr {lr:g}" for lr in lrs), "chosen"], body,
                                   "ll" + "r" * (len(lrs) + 1))
            sections.append(f"## Learning-rate grid (validation macro-F1, first fold and seed), {what}\n\n"
                            + table + "\n\nn here: the selection run (one per cell); p / i = validation "
                            "patients / images.")
        rows = [c for c in cells if c["task"] == task]
        sections.append(f"## Test scores per model and schedule (chosen learning rate), {what}\n\n"
                        + mean_std_table(rows, ["model", "unfreeze", "lr"], list(_METRICS),
                                         labels={"unfreeze": "schedule", **_METRICS}))
        best = results.get("best", {}).get(task)
        if best:
            mine = [r for r in rows if r["model"] == best["model"] and r["unfreeze"] == best["unfreeze"]]
            sections.append(f"## Best configuration, {what}\n\n`{best['model']}`, schedule `{best['unfreeze']}`, lr "
                            f"{best['lr']:g} (highest mean validation macro-F1, "
                            f"{format_cell(summarize(mine, 'val_macro_f1'))}). Its test scores:\n\n"
                            + mean_std_table(mine, ["model", "unfreeze"], list(_METRICS),
                                             labels={"unfreeze": "schedule", **_METRICS}))
        models = list(dict.fromkeys(r["model"] for r in rows))
        series = {}
        for sched in SCHEDULES:
            stats = [summarize([r for r in rows if r["model"] == m and r["unfreeze"] == sched], "macro_f1")
                     for m in models]
            if any(s["mean"] is not None for s in stats):
                series[sched] = ([np.nan if s["mean"] is None else s["mean"] for s in stats],
                                 [np.nan if s["std"] is None else s["std"] for s in stats])
        name = f"schedules_{task}.png"
        grouped_bars(models, series, suite_dir / name, "test macro-F1", f"unfreezing schedules ({task})")
        figures.append((name, f"Test macro-F1 per model and unfreezing schedule ({what}); error bars ± std over "
                        "folds x seeds."))
        for cam in results.get("gradcam", {}).get(task, []):
            figures.append((cam["file"], cam["caption"]))
    return write_suite_report(suite_dir, results, "Transfer learning: backbones x unfreezing schedules", sections,
                              figures)


def _gradcam(study: StudyConfig, ctx: SuiteContext, task: str, run_dir: str) -> list[dict[str, str]]:
    """Grad-CAM figures of one checkpoint (``histo-bench explain``), cached in ``gradcam/<task>``."""

    target = study.suite_dir / "gradcam" / task
    done = target / "explain.json"
    if done.exists() and json.loads(done.read_text()).get("checkpoint") == str(Path(run_dir) / "best.pt"):
        info = json.loads(done.read_text())
    else:
        ctx.announce(f"Grad-CAM of the best {task} model")
        info = explain(ExplainConfig(checkpoint=str(Path(run_dir) / "best.pt"), out=str(target), split="test",
                                     n_examples=4 if study.quick else 8, n_per_outcome=2 if study.quick else 4,
                                     max_images=40 if study.quick else 400,
                                     batch_size=study.batch_size or (8 if study.quick else 32),
                                     device=study.device, seed=study.seed))
    return [{"file": str(Path("gradcam") / task / f["file"]), "caption": f"{info['model']} ({task}): "
             + f["caption"]} for f in info["figures"] if f["kind"] == "saliency"]


@register_suite(NAME, "ResNet-50 / DenseNet-121 / ConvNeXt-V2-T, head / last-block / full unfreezing, lr grid on "
                      "validation, binary + subtype, Grad-CAM of the best", report=_report,
                tasks=("binary", "subtype"), models=DEFAULT_MODELS)
def run(study: StudyConfig, ctx: SuiteContext) -> dict[str, Any]:
    tasks = study.tasks_or(("binary", "subtype"))
    models = study.models_or(DEFAULT_MODELS)
    grid = _grid(study)
    (fold0, seed0), *_ = study.runs()
    rows: list[dict[str, Any]] = []
    search: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    gradcam: dict[str, list[dict[str, str]]] = {}
    init = "random"
    for task in tasks:
        for model in models:
            for sched in SCHEDULES:
                def config(lr: float, fold: int, seed: int, model=model, sched=sched, task=task):
                    return study.train_config(model=model, task=task, train_magnification="all", fold=fold, seed=seed,
                                              lr=lr, unfreeze=sched, weight_decay=0.05,
                                              out=study.run_dir(task, model, sched, f"lr{lr:g}", fold=fold,
                                                                seed=seed))
                trials = []
                for lr in grid:
                    ctx.announce(f"grid: {task}, {model}, {sched}, lr {lr:g}")
                    result = ctx.train(config(lr, fold0, seed0))
                    val = result.best_val or {}
                    trials.append({"task": task, "model": model, "unfreeze": sched, "lr": lr, "fold": fold0,
                                   "seed": seed0, "val_macro_f1": val.get("macro_f1"),
                                   "n_patients": val.get("n_patients", 0), "n_images": val.get("n_images", 0)})
                chosen = max(trials, key=lambda t: (-1.0 if t["val_macro_f1"] is None else t["val_macro_f1"],
                                                    -t["lr"]))
                chosen["chosen"] = True
                search += trials
                for fold, seed in study.runs():
                    cfg = config(chosen["lr"], fold, seed)
                    init = "ImageNet weights (timm hub cache)" if cfg.pretrained else (
                        f"local weights ({Path(cfg.weights).parent})" if cfg.weights else init)
                    rows += ctx.train_and_test(cfg, ("all",), unfreeze=sched, lr=chosen["lr"])
        mine = [r for r in rows if r["task"] == task]
        configs = list(dict.fromkeys((r["model"], r["unfreeze"], r["lr"]) for r in mine))  # first wins ties
        def val_f1(c, mine=mine) -> float:  # a mean of 0.0 is a score; only None ranks last
            mean = summarize([r for r in mine if (r["model"], r["unfreeze"], r["lr"]) == c], "val_macro_f1")["mean"]
            return -1.0 if mean is None else mean

        top = max(configs, key=val_f1)
        best[task] = {"model": top[0], "unfreeze": top[1], "lr": top[2]}
        first = next(r for r in mine if (r["model"], r["unfreeze"], r["lr"]) == top)
        gradcam[task] = _gradcam(study, ctx, task, first["run_dir"])
    return ctx.save(rows, search=search, best=best, gradcam=gradcam, grid=list(grid), models=list(models),
                    schedules=list(SCHEDULES), init=init)
