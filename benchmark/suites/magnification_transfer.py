"""``magnification-transfer``: the DeiT-Small / Swin-Tiny cross-magnification study, over folds x seeds.

Each model is trained on 100X, on 400X and on mixed (100X+400X) and every checkpoint is tested on each of the three.
The report has, per task: the in-domain table (train = test), the train x test macro-F1 matrix per model, the
directional asymmetry F1(100X->400X) - F1(400X->100X), mixed-training generalisation (mixed->100X / mixed->400X and
their gain over the single-magnification model of that magnification), and the cross-domain mean (mean of the
100X->400X and 400X->100X F1); every cell mean ± std over folds x seeds with n. Then an efficiency table (parameters,
GFLOPs per image, eager inference images/s and latency on the study's device, training images/s from the runs'
metrics) and a t-SNE of each model's features coloured by magnification (``histo-bench explain`` on the mixed-trained
checkpoint of the first fold and seed).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.compute import flops_per_image
from benchmark.harness import TimingConfig, time_calls
from benchmark.reports.curves import read_jsonl
from benchmark.suites.base import SuiteContext, register_suite
from benchmark.suites.figures import grouped_bars, heatmaps
from benchmark.suites.report import write_suite_report
from benchmark.suites.study import StudyConfig
from benchmark.suites.tables import mean_grid, mean_std_matrix, mean_std_table, paired, summarize
from histo_bench.device import resolve_device
from histo_bench.markdown import markdown_table
from ingest.store import ImageStore
from models.registry import build_model, count_params
from pipelines.data.tasks import describe_task, task_classes
from pipelines.explain.run import ExplainConfig, explain

log = logging.getLogger(__name__)

NAME = "magnification-transfer"
MAGS: tuple[str, ...] = ("100X", "400X", "mixed")
DEFAULT_MODELS: tuple[str, ...] = ("deit_small", "swin_tiny")

_DERIVED_LABELS = {"f1_100_to_400": "100X->400X", "f1_400_to_100": "400X->100X", "asymmetry": "asymmetry",
                   "mixed_to_100": "mixed->100X", "mixed_to_400": "mixed->400X", "mixed_gain": "mixed gain",
                   "cross_domain_mean": "cross-domain mean"}


def _derive(cells: dict[Any, dict]) -> dict[str, Any] | None:
    """The asymmetry / generalisation numbers of one (model, fold, seed) from its train x test cells."""
    def f1(train: str, test: str) -> float | None:
        c = cells.get((train, test))
        return None if c is None else c["macro_f1"]

    a, b = f1("100X", "400X"), f1("400X", "100X")
    m100, m400, d100, d400 = f1("mixed", "100X"), f1("mixed", "400X"), f1("100X", "100X"), f1("400X", "400X")
    gains = [m - d for m, d in ((m100, d100), (m400, d400)) if m is not None and d is not None]
    images = [c["n_images"] for key, c in cells.items() if key in (("100X", "100X"), ("400X", "400X"))]
    patients = [c["n_patients"] for c in cells.values()]
    return {"f1_100_to_400": a, "f1_400_to_100": b, "asymmetry": a - b if a is not None and b is not None else None,
            "mixed_to_100": m100, "mixed_to_400": m400, "mixed_gain": float(np.mean(gains)) if gains else None,
            "cross_domain_mean": float(np.mean([a, b])) if a is not None and b is not None else None,
            "n_patients": max(patients) if patients else 0, "n_images": sum(images)}


def _report(suite_dir: Path, results: dict[str, Any]) -> Path:

    cells = results["cells"]
    sections: list[str] = []
    figures: list[tuple[str, str]] = []
    for task in results["tasks"]:
        rows = [c for c in cells if c["task"] == task]
        models = list(dict.fromkeys(r["model"] for r in rows))
        trains = [m for m in MAGS if any(r["train"] == m for r in rows)]
        tests = [m for m in MAGS if any(r["test"] == m for r in rows)]
        what = describe_task(task, results["classes"][task])
        in_domain = [r for r in rows if r["train"] == r["test"]]
        chance = 1 / max(len(results["classes"][task]), 1)
        sections.append(f"## In-domain macro-F1 (train = test magnification), {what}\n\n"
                        f"Chance level: {chance:.3f} (uniform guessing over {len(results['classes'][task])} "
                        "classes); 1.0 is perfect.\n\n"
                        + mean_std_matrix(in_domain, "model", "train", "macro_f1", corner="model \\ magnification",
                                          cols_order=trains)
                        + "\n\nAccuracy, balanced accuracy and patient-level accuracy (majority vote) of the same "
                          "runs:\n\n"
                        + mean_std_table(in_domain, ["model", "train"], ["accuracy", "balanced_accuracy",
                                                                           "patient_accuracy"],
                                         labels={"train": "magnification", "balanced_accuracy": "balanced accuracy",
                                                 "patient_accuracy": "patient accuracy"}))
        for m in models:
            sections.append(f"## {m}: train x test macro-F1 (cross-domain matrix), {what}\n\n"
                            + mean_std_matrix([r for r in rows if r["model"] == m], "train", "test", "macro_f1",
                                              rows_order=trains, cols_order=tests))
        derived = paired(rows, ["model"], _derive, key=("train", "test"))
        sections.append(f"## Directional asymmetry, mixed-training generalisation, cross-domain mean, {what}\n\n"
                        + mean_std_table(derived, ["model"], list(_DERIVED_LABELS), labels=_DERIVED_LABELS,
                                         signed=("asymmetry", "mixed_gain"))
                        + "\n\nAsymmetry = F1(100X->400X) - F1(400X->100X), per run. Mixed gain = mean over 100X "
                          "and 400X of F1(mixed->X) - F1(X->X). Cross-domain mean = mean of F1(100X->400X) and "
                          "F1(400X->100X). n here: runs; test patients / the 100X + 400X test images.")
        panels = []
        for m in models:
            mean, std = mean_grid([r for r in rows if r["model"] == m], "train", "test", "macro_f1", trains, tests)
            panels.append((f"{m}: macro-F1 ({task})", mean, std, trains, tests))
        heatmaps(panels, suite_dir / f"cross_magnification_{task}.png")
        figures.append((f"cross_magnification_{task}.png", f"Train x test macro-F1 per model ({what}), mean ± std "
                        "over folds x seeds."))
        series = {}
        for key in ("f1_100_to_400", "f1_400_to_100", "cross_domain_mean"):
            stats = [summarize([d for d in derived if d["model"] == m], key) for m in models]
            series[_DERIVED_LABELS[key]] = ([s["mean"] if s["mean"] is not None else np.nan for s in stats],
                                            [s["std"] if s["std"] is not None else np.nan for s in stats])
        grouped_bars(models, series, suite_dir / f"asymmetry_{task}.png", "macro-F1",
                     f"cross-magnification transfer ({task})")
        figures.append((f"asymmetry_{task}.png", f"Cross-magnification macro-F1 ({what}); error bars: ± std over "
                        "folds x seeds."))
    sections.append(_efficiency_section(results.get("efficiency", [])))
    for t in results.get("tsne", []):
        figures.append((t["file"], f"t-SNE of {t['model']} pooled features ({t['task']} task, trained on mixed, "
                        f"{t['n_points']} test images of fold {t['fold']}, seed {t['seed']}), by class and by "
                        f"magnification; silhouette by class {_fmt(t['silhouette_class'])}, by magnification "
                        f"{_fmt(t['silhouette_magnification'])}."))
    title = f"Magnification transfer: {', '.join(dict.fromkeys(c['model'] for c in cells))}"
    return write_suite_report(suite_dir, results, title, sections, figures)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def _efficiency_section(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    headers = ["model", "parameters", "GFLOPs / image", "image size", "eager inference images/s (batch)",
               "latency p50 ms", "training images/s (mean over runs)", "device"]
    body = [[r["model"], f"{r['params'] / 1e6:.1f} M", f"{r['gflops_per_image']:.2f}", r["image_size"],
             f"{r['images_per_s']:.1f} ({r['batch_size']})", f"{r['latency_p50_ms']:.1f}",
             f"{r['train_images_per_s']:.1f}" if r.get("train_images_per_s") else "-", r["device"]] for r in rows]
    out = ["## Efficiency", "", markdown_table(headers, body, "lrrrrrrl")]
    out += ["", "Inference: fp32 eager forward passes timed after warm-up (median latency); FLOPs counted by torch's "
            "FlopCounterMode (multiply-add = 2). One measurement on the study's device, not repeated over seeds; "
            "`histo-bench run` benchmarks compiled backends and batch sizes."]
    return "\n".join(out)


def _efficiency(study: StudyConfig, models: tuple[str, ...], n_classes: int, runs: list[dict]) -> list[dict]:
    """Parameters, FLOPs and eager throughput per model (cached in efficiency.json)."""


    path = study.suite_dir / "efficiency.json"
    cached = {r["model"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    device = resolve_device(study.device)
    out = []
    for model in models:
        config = study.train_config(model=model, fold=0, seed=study.seed, out="")
        key = (config.image_size, config.batch_size, device)
        hit = cached.get(model)
        if hit and (hit["image_size"], hit["batch_size"], hit["device"]) == key:
            out.append(hit)
            continue
        net = build_model(model, n_classes, **config.model_kwargs).eval()
        flops = flops_per_image(net, config.image_size)
        net = net.to(device)
        x = torch.randn(config.batch_size, 3, config.image_size, config.image_size, device=device)
        timing = TimingConfig(warmup=1, min_iters=3, min_time_s=0.0, max_time_s=2.0) if study.quick else \
            TimingConfig.for_device(device)
        with torch.inference_mode():
            summary = time_calls(net, x, device, timing).summary(config.batch_size)
        run_dirs = dict.fromkeys(r["run_dir"] for r in runs if r["model"] == model)
        speeds = [row["items_per_s"] for d in run_dirs for row in read_jsonl(Path(d) / "metrics.jsonl")
                  if row.get("items_per_s")]
        out.append({"model": model, "params": count_params(net), "gflops_per_image": flops / 1e9,
                    "image_size": config.image_size, "batch_size": config.batch_size, "device": device,
                    "images_per_s": summary["throughput_ips"], "latency_p50_ms": summary["latency_p50_ms"],
                    "train_images_per_s": float(np.mean(speeds)) if speeds else None})
        del net
    path.write_text(json.dumps(out, indent=1))
    return out


def _tsne(study: StudyConfig, ctx: SuiteContext, rows: list[dict]) -> list[dict]:
    """t-SNE (and the explain figures) of each (task, model)'s first mixed-trained checkpoint."""

    out = []
    firsts: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["train"] == "mixed":
            firsts.setdefault((r["task"], r["model"]), r)
    for (task, model), r in firsts.items():
        target = study.suite_dir / "tsne" / task / model
        done = target / "explain.json"
        checkpoint = str(Path(r["run_dir"]) / "best.pt")
        if done.exists() and json.loads(done.read_text()).get("checkpoint") == checkpoint:
            info = json.loads(done.read_text())
        else:
            ctx.announce(f"t-SNE of {model} ({task}) features by magnification")
            info = explain(ExplainConfig(checkpoint=checkpoint, out=str(target),
                                         split="test", magnifications=("100X", "400X"), n_examples=4,
                                         n_per_outcome=2, max_images=60 if study.quick else 400,
                                         batch_size=study.batch_size or (8 if study.quick else 32),
                                         device=study.device, seed=study.seed))
        if any(f["file"] == "tsne.png" for f in info["figures"]):
            out.append({"task": task, "model": model, "fold": r["fold"], "seed": r["seed"],
                        "file": str(Path("tsne") / task / model / "tsne.png"), **info["tsne"]})
    return out


@register_suite(NAME, "DeiT-Small / Swin-Tiny trained on 100X / 400X / mixed x tested on each: in-domain table, "
                      "cross-domain matrices, asymmetry, mixed-training generalisation, efficiency, t-SNE",
                report=_report, models=DEFAULT_MODELS)
def run(study: StudyConfig, ctx: SuiteContext) -> dict[str, Any]:
    tasks = study.tasks_or(("subtype",))
    models = study.models_or(DEFAULT_MODELS)
    rows: list[dict[str, Any]] = []
    for task in tasks:
        for model in models:
            for train_mag in MAGS:
                for fold, seed in study.runs():
                    parts = (model, train_mag) if len(tasks) == 1 else (task, model, train_mag)
                    config = study.train_config(model=model, task=task, train_magnification=train_mag, fold=fold,
                                                seed=seed, out=study.run_dir(*parts, fold=fold, seed=seed))
                    rows += ctx.train_and_test(config, MAGS)

    n_classes = len(task_classes(ImageStore(study.store_path), tasks[0]))
    ctx.announce("efficiency: parameters, FLOPs, eager throughput")
    efficiency = _efficiency(study, models, n_classes, rows)
    return ctx.save(rows, efficiency=efficiency, tsne=_tsne(study, ctx, rows), magnifications=list(MAGS))
