"""The cross-magnification report of suite directories written before ``benchmark.suites`` (their ``results.json``
has no ``format``): Markdown tables and PNG figures. ``histo-bench report DIR`` still renders them.

Tables follow the DeiT/Swin study: in-domain performance, the train x test macro-F1 matrix per model,
directional asymmetry (100X->400X against 400X->100X), mixed-training generalisation, and the cross-domain mean.
Every number is read from ``results.json`` (so figures and tables agree with the metrics files), and the header
says which data and which task (subtype or binary) it ran on and how many patients and images back each cell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.tasks import describe_task


def _cell(cells: list[dict], model: str, train: str, test: str) -> dict | None:
    return next((c for c in cells if c["model"] == model and c["train"] == train and c["test"] == test), None)


def _f1(c: dict | None) -> str:
    return f"{c['macro_f1']:.3f}" if c else "-"


def task_line(results: dict[str, Any]) -> str:
    """``binary task (benign vs malignant)`` / ``subtype task (8 classes)`` (results before tasks: subtype)."""
    return describe_task(results.get("task", "subtype"), results["classes"])


def data_line(results: dict[str, Any]) -> str:
    origin = results.get("origin", {})
    if origin.get("kind") == "synthetic":
        return ("**Data: SYNTHETIC** (histo-bench's generated H&E-like images; the numbers show the pipeline works "
                f"and nothing clinical). Store: `{results['store']}`.")
    return f"**Data:** user-provided store `{results['store']}` (ingested from `{origin.get('root', '?')}`)."


def tables(results: dict[str, Any]) -> str:
    """The Markdown body (tables only)."""
    cells = results["cells"]
    models = list(dict.fromkeys(c["model"] for c in cells))
    trains = list(dict.fromkeys(c["train"] for c in cells))
    tests = list(dict.fromkeys(c["test"] for c in cells))
    task = task_line(results)
    out = [f"## In-domain (train and test on the same magnification), {task}", "",
           "| model | " + " | ".join(t for t in trains if t in tests) + " |",
           "| --- |" + " ---: |" * len([t for t in trains if t in tests])]
    for m in models:
        row = [f"{_f1(c)} (n={c['n_patients']}p/{c['n_images']}i)" if (c := _cell(cells, m, t, t)) else "-"
               for t in trains if t in tests]
        out.append(f"| {m} | " + " | ".join(row) + " |")
    out += ["", "Macro-F1 on the test split; n = test patients / images behind each number.", ""]
    for m in models:
        out += [f"## {m}: train x test macro-F1, {task}", "", "| train \\ test | " + " | ".join(tests) + " |",
                "| --- |" + " ---: |" * len(tests)]
        for t in trains:
            out.append(f"| {t} | " + " | ".join(_f1(_cell(cells, m, t, s)) for s in tests) + " |")
        out.append("")
    out += [f"## Directional asymmetry and generalisation, {task}", "",
            "| model | 100X->400X | 400X->100X | asymmetry | mixed->100X | mixed->400X | cross-domain mean |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in models:
        a, b = _cell(cells, m, "100X", "400X"), _cell(cells, m, "400X", "100X")
        asym = f"{a['macro_f1'] - b['macro_f1']:+.3f}" if a and b else "-"
        off = [c["macro_f1"] for c in cells if c["model"] == m and c["train"] != c["test"]
               and "mixed" not in (c["train"], c["test"])]
        out.append(f"| {m} | {_f1(a)} | {_f1(b)} | {asym} | {_f1(_cell(cells, m, 'mixed', '100X'))} | "
                   f"{_f1(_cell(cells, m, 'mixed', '400X'))} | {np.mean(off):.3f} |" if off else
                   f"| {m} | {_f1(a)} | {_f1(b)} | {asym} | - | - | - |")
    out += ["", "Asymmetry = F1(100X->400X) - F1(400X->100X). Cross-domain mean = mean macro-F1 of the train/test "
            "pairs of different single magnifications.", ""]
    return "\n".join(out)


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Heatmaps (train x test), asymmetry bars, in-domain confusion matrices and per-class F1, as PNGs."""
    from histo_bench.plotting import pyplot, save_figure

    plt = pyplot()

    cells = results["cells"]
    classes = results["classes"]
    task = results.get("task", "subtype")
    models = list(dict.fromkeys(c["model"] for c in cells))
    trains = list(dict.fromkeys(c["train"] for c in cells))
    tests = list(dict.fromkeys(c["test"] for c in cells))
    paths = []
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False,
                             layout="constrained")
    for ax, m in zip(axes[0], models, strict=True):
        grid = np.array([[(_cell(cells, m, t, s) or {}).get("macro_f1", np.nan) for s in tests] for t in trains])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(tests)), tests)
        ax.set_yticks(range(len(trains)), trains)
        ax.set_xlabel("test")
        ax.set_ylabel("train")
        ax.set_title(f"{m}: macro-F1 ({task})")
        for i in range(len(trains)):
            for j in range(len(tests)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                        color="white" if grid[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    paths.append(save_figure(fig, out_dir / "cross_magnification_heatmaps.png"))

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(models), 3.4), layout="constrained")
    width = 0.38
    for k, (a, b, label) in enumerate((("100X", "400X", "100X->400X"), ("400X", "100X", "400X->100X"))):
        vals = [(_cell(cells, m, a, b) or {}).get("macro_f1", np.nan) for m in models]
        ax.bar(np.arange(len(models)) + (k - 0.5) * width, vals, width, label=label)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("macro-F1")
    ax.set_ylim(0, 1)
    ax.set_title(f"directional asymmetry ({task})")
    ax.legend()
    paths.append(save_figure(fig, out_dir / "asymmetry.png"))

    in_domain = [c for c in cells if c["train"] == c["test"]]
    fig, axes = plt.subplots(len(models), max(1, len(trains)), figsize=(3.6 * len(trains), 3.4 * len(models)),
                             squeeze=False, layout="constrained")
    for i, m in enumerate(models):
        for j, t in enumerate(trains):
            ax = axes[i][j]
            c = _cell(cells, m, t, t)
            if c is None:
                ax.axis("off")
                continue
            ax.imshow(np.array(c["confusion"]), cmap="Blues")
            ax.set_title(f"{m} {t}", fontsize=9)
            ax.set_xticks(range(len(classes)), [n[:6] for n in classes], rotation=90, fontsize=6)
            ax.set_yticks(range(len(classes)), [n[:6] for n in classes], fontsize=6)
            ax.set_xlabel("predicted", fontsize=8)
            ax.set_ylabel("true", fontsize=8)
    paths.append(save_figure(fig, out_dir / "confusion_matrices.png"))

    fig, ax = plt.subplots(figsize=(8, 3.4), layout="constrained")
    width = 0.8 / max(1, len(in_domain))
    for k, c in enumerate(in_domain):
        ax.bar(np.arange(len(classes)) + k * width, [c["per_class"][n]["f1"] for n in classes], width,
               label=f"{c['model']} {c['train']}")
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, [n.replace("_", "\n") for n in classes], fontsize=7)
    ax.set_ylabel("F1 (in-domain test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out_dir / "per_class_f1.png"))
    return paths


def write_report(suite_dir: str | Path) -> Path:
    """``report.md`` + figures in ``suite_dir`` from its ``results.json``."""
    suite_dir = Path(suite_dir)
    results = json.loads((suite_dir / "results.json").read_text())
    figs = figures(results, suite_dir)
    cfg = results["config"]["train"]
    models = ", ".join(dict.fromkeys(c["model"] for c in results["cells"]))
    body = [f"# Cross-magnification report, {task_line(results)} ({models})", "",
            data_line(results), "", f"**Task:** {task_line(results)}: classes {', '.join(results['classes'])}.", "",
            f"Training: {cfg['epochs']} epochs max, batch {cfg['batch_size']}, AdamW lr {cfg['lr']}, weight decay "
            f"{cfg['weight_decay']}, {cfg['image_size']} px, precision {cfg['precision']}, early stopping on "
            f"validation macro-F1 (patience {cfg['patience']}), seed {cfg['seed']}"
            + (f", at most {cfg['max_steps_per_epoch']} steps per epoch" if cfg.get("max_steps_per_epoch") else "")
            + ". Splits are by patient.", "", tables(results), "## Figures", ""]
    body += [f"![{p.stem}]({p.name})" for p in figs]
    path = suite_dir / "report.md"
    path.write_text("\n".join(body) + "\n")
    return path
