"""``fusion-inputs``: the multi-input study: how accuracy changes with the number of magnification inputs.

The EfficientNet-B0 fusion model (``fusion_effnet_b0``: one shared encoder, magnification embeddings, cross-scale
attention) is trained with K = 1, 2, 3 and 4 inputs, the inputs being (:data:`INPUT_SETS`) 400X; 200X+400X;
100X+200X+400X; 40X+100X+200X+400X: each added input is the next lower magnification (a wider field of view). A sample
is an anchor image at the first input's magnification plus a same-patient image at each other one
(:mod:`pipelines.data.fusion`). Training uses independent per-input augmentation (every view draws its own crop,
flips, colour jitter, Gaussian blur and random erasing: :data:`AUGMENT`), a class-weighted sampler *and*
inverse-frequency loss weighting, as in the study. The report gives macro-F1 (and accuracy, balanced accuracy,
patient accuracy) mean ± std over folds x seeds per K, the gain over K = 1, and a line plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.suites.base import SuiteContext, register_suite
from benchmark.suites.figures import lines
from benchmark.suites.report import write_suite_report
from benchmark.suites.study import StudyConfig
from benchmark.suites.tables import mean_std_table, summarize
from histo_bench.markdown import markdown_table
from ingest.store import ImageStore
from pipelines.data.tasks import describe_task

NAME = "fusion-inputs"
MODEL = "fusion_effnet_b0"
#: The magnifications fed for K = 1..4 inputs (first = the anchor whose label and patient count).
INPUT_SETS: dict[int, tuple[str, ...]] = {1: ("400X",), 2: ("200X", "400X"), 3: ("100X", "200X", "400X"),
                                          4: ("40X", "100X", "200X", "400X")}
#: Per-input augmentation on top of the default crop / flips / rot90 / colour jitter.
AUGMENT: dict[str, Any] = {"blur": 0.3, "erasing": 0.25}

_METRICS = {"macro_f1": "macro-F1", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
            "patient_accuracy": "patient accuracy"}


def _report(suite_dir: Path, results: dict[str, Any]) -> Path:

    cells = results["cells"]
    sections = [
        "## Inputs\n\n"
        + markdown_table(["inputs (K)", "magnifications"],
                         [[k, " + ".join(m)] for k, m in INPUT_SETS.items() if any(c["k"] == k for c in cells)], "rl")
        + f"\n\nModel `{MODEL}`; per-input augmentation: crop, flips, rot90, colour jitter, Gaussian blur (p "
          f"{AUGMENT['blur']}) and random erasing (p {AUGMENT['erasing']}), drawn independently for every input; "
          "a class-weighted sampler *and* inverse-frequency loss weights (both, as in the paper; this double-weights "
          "rare classes: a class's effective weight is about 1/frequency², not 1/frequency). Test images are "
          "counted at the anchor "
          "magnification (400X)."
        + ("\n\nSkipped (the store lacks a magnification): "
           + ", ".join(f"K={k} ({why})" for k, why in results.get("skipped", {}).items())
           if results.get("skipped") else "")]
    figures = []
    for task in results["tasks"]:
        rows = [c for c in cells if c["task"] == task]
        what = describe_task(task, results["classes"][task])
        ks = sorted(dict.fromkeys(r["k"] for r in rows))
        by_run: dict[tuple, dict[int, dict]] = {}
        for r in rows:
            by_run.setdefault((r["model"], r["fold"], r["seed"]), {})[r["k"]] = r
        gain_rows = [{"k": k, "gain": m[k]["macro_f1"] - m[1]["macro_f1"], "fold": fold, "seed": seed,
                      "n_patients": m[k]["n_patients"], "n_images": m[k]["n_images"]}
                     for (_, fold, seed), m in by_run.items() if 1 in m for k in ks if k != 1 and k in m]
        sections.append(f"## Accuracy vs number of inputs, {what}\n\n"
                        + mean_std_table(rows, ["k", "train"], list(_METRICS),
                                         labels={"k": "inputs (K)", "train": "magnifications", **_METRICS})
                        + ("\n\nMacro-F1 gain over one input (400X), per run:\n\n"
                           + mean_std_table(gain_rows, ["k"], ["gain"], labels={"k": "inputs (K)",
                                                                                "gain": "macro-F1 - macro-F1(K=1)"},
                                            signed=("gain",)) if gain_rows else ""))
        stats = {label: [summarize([r for r in rows if r["k"] == k], metric) for k in ks]
                 for metric, label in (("macro_f1", "macro-F1"), ("accuracy", "accuracy"))}
        series = {label: ([s["mean"] for s in ss], [s["std"] if s["std"] is not None else np.nan for s in ss])
                  for label, ss in stats.items()}
        name = f"inputs_{task}.png"
        lines(ks, series, suite_dir / name, "number of magnification inputs (K)", "test score",
              f"{MODEL}: score vs inputs ({task})")
        figures.append((name, f"Test macro-F1 and accuracy vs the number of inputs ({what}); mean ± std over "
                        "folds x seeds (bars and band)."))
    return write_suite_report(suite_dir, results, "Fusion inputs: accuracy vs number of magnifications", sections,
                              figures)


@register_suite(NAME, "EfficientNet-B0 fusion with 1, 2, 3, 4 magnification inputs, per-input augmentation, "
                      "weighted sampler + loss: macro-F1 vs number of inputs", report=_report, models=(MODEL,))
def run(study: StudyConfig, ctx: SuiteContext) -> dict[str, Any]:

    present = set(ImageStore(study.store_path).magnification.tolist())
    rows: list[dict[str, Any]] = []
    skipped = {}
    tasks = study.tasks_or(("subtype",))
    for model in study.models_or((MODEL,)):
        for task in tasks:
            for k, mags in INPUT_SETS.items():
                missing = [m for m in mags if m not in present]
                if missing:
                    skipped[k] = f"no {', '.join(missing)} images"
                    continue
                train_mag = ",".join(mags)
                for fold, seed in study.runs():
                    parts = (f"k{k}",) if len(tasks) == 1 else (task, f"k{k}")
                    config = study.train_config(model=model, task=task, train_magnification=train_mag, fold=fold,
                                                seed=seed, out=study.run_dir(*parts, fold=fold, seed=seed),
                                                # both weightings, as in the paper (the report says so)
                                                augment=AUGMENT, sampler="weighted", class_weighting="loss")
                    rows += ctx.train_and_test(config, (train_mag,), k=k, train="+".join(mags))
    return ctx.save(rows, input_sets={k: list(v) for k, v in INPUT_SETS.items()}, skipped=skipped,
                    augment=AUGMENT)
