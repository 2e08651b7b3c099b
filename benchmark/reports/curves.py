"""Training curves from ``metrics.jsonl`` files (one JSON row per epoch, as the training engine writes them for
every recipe: :mod:`pipelines.training.engine`): one PNG with the training loss and the validation metrics
used for early stopping, and a summary row per run.

Rows without a key are skipped; the validation keys are found by name (``val_macro_f1``, ``val_slide_macro_f1``,
or any ``val*macro_f1`` / ``val*accuracy``), so every trainer's file plots without configuration.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from histo_bench.plotting import pyplot

Run = tuple[str, list[dict[str, Any]]]
SUMMARY_HEADER = ["run", "epochs", "best val macro-F1", "last train loss", "s / epoch", "images / s"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per line (unparsable lines skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def _key(row: dict[str, Any], preferred: tuple[str, ...], suffix: str) -> str | None:
    for k in preferred:
        if k in row:
            return k
    return next((k for k in row if k.startswith("val") and k.endswith(suffix)), None)


def _mean(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return f"{sum(values) / len(values):.3g}" if values else "-"


def summary_rows(runs: list[Run]) -> list[list[Any]]:
    """Per run: name, epochs, best validation macro-F1 (epoch), last training loss, mean s/epoch, mean images/s."""
    table = []
    for name, rows in runs:
        f1 = _key(rows[0], ("val_macro_f1", "val_slide_macro_f1"), "macro_f1")
        best = max(rows, key=lambda r: r.get(f1) or 0) if f1 else None
        loss = rows[-1].get("train_loss")
        table.append([name, len(rows), f"{best[f1]:.3f} (epoch {best.get('epoch', '?')})" if best else "-",
                      f"{loss:.4f}" if isinstance(loss, int | float) else "-", _mean(rows, "epoch_seconds"),
                      _mean(rows, "items_per_s")])
    return table


#: more runs than this: no legend on the curves
MAX_LEGEND = 12


def curves_png(runs: list[Run]) -> bytes:
    """One PNG, three panels (training loss, validation macro-F1, validation accuracy), one line per run."""
    from matplotlib.ticker import MaxNLocator


    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for name, rows in runs:
        epochs = [r.get("epoch", k) for k, r in enumerate(rows)]
        f1 = _key(rows[0], ("val_macro_f1", "val_slide_macro_f1"), "macro_f1")
        acc = _key(rows[0], ("val_accuracy", "val_slide_accuracy"), "accuracy")
        for ax, key in zip(axes, ("train_loss", f1, acc), strict=True):
            if key:
                ax.plot(epochs, [r.get(key) for r in rows], marker="o", markersize=3, label=name)
    for ax, title in zip(axes, ("train loss", "validation macro-F1", "validation accuracy"), strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if len(runs) <= MAX_LEGEND:
        axes[0].legend(fontsize=7)
    else:  # a legend of dozens of runs would squeeze the axes to nothing; the table below names them
        fig.suptitle(f"{len(runs)} runs (see the table for their names)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
