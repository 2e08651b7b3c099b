"""The PNG figures of ``histo-bench explain``: saliency grids, TP/FP/FN grids per class, and the t-SNE panels.

Plain matplotlib (Agg) over arrays the caller computed: images are uint8 (H, W, 3), maps float (H, W) in [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from histo_bench.plotting import pyplot, save_figure
from pipelines.explain.cam import overlay

log = logging.getLogger(__name__)

OUTCOMES = ("TP", "FP", "FN")


@dataclass(frozen=True)
class Example:
    """One explained image: the view the model saw, its saliency map, and the labels to print."""

    image: np.ndarray
    cam: np.ndarray
    true: str
    pred: str
    magnification: str


def _short(name: str, n: int = 20) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def cam_grid(examples: list[Example], title: str, path: Path, pairs_per_row: int = 4) -> Path:
    """Pairs (image | overlay) with the true label over the image and the prediction (green right, red wrong)
    over the overlay."""
    plt = pyplot()
    rows = max(1, -(-len(examples) // pairs_per_row))
    cols = 2 * min(pairs_per_row, max(1, len(examples)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.55 * cols, 1.8 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for k, ex in enumerate(examples):
        r, c = divmod(k, pairs_per_row)
        left, right = axes[r][2 * c], axes[r][2 * c + 1]
        left.imshow(ex.image)
        left.set_title(f"true: {_short(ex.true)}", fontsize=6.5)
        right.imshow(overlay(ex.image, ex.cam))
        right.set_title(f"pred: {_short(ex.pred)}", fontsize=6.5,
                        color="#1a7f37" if ex.true == ex.pred else "#cf222e")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def outcome_grid(class_name: str, groups: dict[str, list[Example]], per_row: int, path: Path) -> Path:
    """One row per outcome (TP, FP, FN) of ``class_name``, saliency overlays titled magnification, true -> pred."""
    plt = pyplot()
    cols = max(1, per_row)
    fig, axes = plt.subplots(len(OUTCOMES), cols, figsize=(1.9 * cols + 0.5, 2.0 * len(OUTCOMES) + 0.3),
                             squeeze=False, layout="constrained")
    for r, outcome in enumerate(OUTCOMES):
        examples = groups.get(outcome, [])
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(outcome, fontsize=10, fontweight="bold")
            if c >= len(examples):
                if c == 0:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=8, color="grey",
                            transform=ax.transAxes)
                continue
            ex = examples[c]
            ax.imshow(overlay(ex.image, ex.cam))
            ax.set_title(f"{ex.magnification}: {_short(ex.true)}\n-> {_short(ex.pred)}", fontsize=6.5,
                         color="#1a7f37" if ex.true == ex.pred else "#cf222e")
    fig.suptitle(f"{class_name}: true positives, false positives, false negatives", fontsize=9)
    return save_figure(fig, path)


def tsne_figure(embedding: np.ndarray, labels: np.ndarray, classes: list[str], magnifications: np.ndarray,
                title: str, path: Path) -> Path:
    """Two panels of the same 2-D embedding: coloured by class, and by magnification."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k, name in enumerate(classes):
        sel = labels == k
        if sel.any():
            axes[0].scatter(embedding[sel, 0], embedding[sel, 1], s=10, color=cmap(k % cmap.N), label=name,
                            alpha=0.8, linewidths=0)
    axes[0].set_title("coloured by class", fontsize=9)
    axes[0].legend(fontsize=6.5, markerscale=1.5, loc="best", frameon=False)
    mags = list(dict.fromkeys(magnifications.tolist()))
    mag_cmap = plt.get_cmap("Dark2")
    for k, mag in enumerate(mags):
        sel = magnifications == mag
        axes[1].scatter(embedding[sel, 0], embedding[sel, 1], s=10, color=mag_cmap(k % mag_cmap.N), label=mag,
                        alpha=0.8, linewidths=0)
    axes[1].set_title("coloured by magnification", fontsize=9)
    axes[1].legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of ``features`` (N, D): standardised, PCA to at most 50 dimensions first, the
    perplexity lowered for small N."""

    x = features.astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    n_pca = min(50, x.shape[0] - 1, x.shape[1])
    if n_pca >= 2 and x.shape[1] > n_pca:
        x = PCA(n_components=n_pca, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(x)


def silhouette(features: np.ndarray, groups: np.ndarray) -> float | None:
    """Silhouette score (cosine) of ``groups`` in feature space: near 0 when the groups mix, towards 1 when they
    separate. None with fewer than two groups or too few points."""

    n_groups = len(set(groups.tolist()))
    if n_groups < 2 or n_groups >= len(groups):
        return None
    return float(silhouette_score(features, groups, metric="cosine"))
