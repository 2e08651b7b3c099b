"""Figures shared by the suites (matplotlib, Agg): mean heatmaps with ± std, grouped bars and lines with error bars.

Every function takes plain arrays (means and stds, NaN = missing) and writes one PNG; the means come from
:func:`benchmark.suites.tables.mean_grid` / :func:`~benchmark.suites.tables.summarize`, so figures and tables agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histo_bench.plotting import pyplot, save_figure


def heatmaps(panels: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str], Sequence[str]]], path: Path,
             xlabel: str = "test", ylabel: str = "train", vmax: float = 1.0) -> Path:
    """One heatmap per panel ``(title, mean, std, row labels, column labels)``, cells annotated mean ± std."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.0), squeeze=False, layout="constrained")
    im = None
    for ax, (title, mean, std, rows, cols) in zip(axes[0], panels, strict=True):
        im = ax.imshow(mean, vmin=0, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        for i in range(mean.shape[0]):
            for j in range(mean.shape[1]):
                if np.isnan(mean[i, j]):
                    continue
                text = f"{mean[i, j]:.2f}" + ("" if np.isnan(std[i, j]) else f"\n±{std[i, j]:.2f}")
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if mean[i, j] < 0.6 * vmax else "black")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    return save_figure(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path,
                 ylabel: str, title: str, ylim: tuple[float, float] | None = (0, 1)) -> Path:
    """Bars per group, one colour per series ``label -> (means, stds)``, with ± std error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.0 + 1.4 * len(groups) * max(1, len(series)) / 2, 3.6), layout="constrained")
    width = 0.8 / max(1, len(series))
    for k, (label, (means, stds)) in enumerate(series.items()):
        x = np.arange(len(groups)) + (k - (len(series) - 1) / 2) * width
        ax.bar(x, np.asarray(means, dtype=float), width, yerr=np.nan_to_num(np.asarray(stds, dtype=float)),
               capsize=3, label=label)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def lines(x: Sequence[float], series: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path, xlabel: str,
          ylabel: str, title: str, ylim: tuple[float, float] | None = (0, 1)) -> Path:
    """One line per series ``label -> (means, stds)`` over ``x``, with a ± std band and error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    for label, (means, stds) in series.items():
        m, s = np.asarray(means, dtype=float), np.nan_to_num(np.asarray(stds, dtype=float))
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=label)
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    ax.set_xticks(list(x))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
