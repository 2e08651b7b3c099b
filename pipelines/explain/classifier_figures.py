"""The figures of an image-classifier explanation (``histo-bench explain``, :mod:`pipelines.explain.run`), captioned.

Given what the classifier made of the sampled images (:class:`Predictions`), this module picks the images each
figure shows (:func:`pick_examples`: per magnification a class-spread set for the saliency grid, per class its true
positives, false positives and false negatives), draws them through :mod:`pipelines.explain.figures` and returns
each figure's ``explain.json`` entry (file, kind, caption): the saliency grid and accuracy per magnification
(:func:`saliency_figures`), the outcome grid per class (:func:`outcome_figures`) and the t-SNE panels with their
silhouette scores (:func:`tsne_figures`). Running the model is the caller's part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.explain.figures import OUTCOMES, Example, cam_grid, outcome_grid, silhouette, tsne_embedding, tsne_figure

#: store index -> the :class:`~pipelines.explain.figures.Example` (image, map, true and predicted class) it shows.
ExampleOf = Callable[[int], Example]


@dataclass(frozen=True)
class Predictions:
    """The sampled images of one explanation, one entry per image: store ``indices``, true class ``y``, predicted
    class ``pred``, ``magnification``, ``patient`` and the pooled backbone ``features`` (n, D)."""

    indices: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    magnification: np.ndarray
    patient: np.ndarray
    features: np.ndarray


def _spread(candidates: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    """Up to ``n`` of ``candidates`` taking the classes in turn (random order within each class)."""
    by_class = [list(rng.permutation(candidates[labels[candidates] == c])) for c in np.unique(labels[candidates])]
    picked: list[int] = []
    while len(picked) < n and any(by_class):
        for group in by_class:
            if group and len(picked) < n:
                picked.append(int(group.pop(0)))
    return picked


def pick_examples(seen: Predictions, labels: np.ndarray, classes: list[str], mags: list[str], n_examples: int,
                  n_per_outcome: int, rng: np.random.Generator
                  ) -> tuple[dict[str, list[int]], dict[str, dict[str, list[int]]]]:
    """(magnification -> up to ``n_examples`` store indices spread over the classes, class -> outcome -> up to
    ``n_per_outcome`` store indices of its TP / FP / FN); classes with no outcome at all are left out."""
    indices, y, pred = seen.indices, seen.y, seen.pred
    grid_idx = {mag: _spread(indices[seen.magnification == mag], labels, n_examples, rng) for mag in mags}
    groups: dict[str, dict[str, list[int]]] = {}
    for c, name in enumerate(classes):
        masks = {"TP": (y == c) & (pred == c), "FP": (y != c) & (pred == c), "FN": (y == c) & (pred != c)}
        picks = {o: [int(i) for i in rng.permutation(indices[m])[:n_per_outcome]] for o, m in masks.items()}
        if any(picks.values()):
            groups[name] = picks
    return grid_idx, groups


def saliency_figures(seen: Predictions, grid_idx: dict[str, list[int]], example: ExampleOf, model_label: str,
                     split: str, method: str, out: Path, step: Callable[[], None]
                     ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(``cam_<magnification>.png`` entries, accuracy per magnification): one saliency grid per magnification of
    ``grid_idx``, titled by ``model_label`` (the model and what it was trained on); ``step()`` after each."""
    figures, accuracy = [], {}
    for mag, shown in grid_idx.items():
        sel = seen.magnification == mag
        acc = float((seen.pred[sel] == seen.y[sel]).mean())
        accuracy[mag] = {"accuracy": acc, "n_images": int(sel.sum()),
                         "n_patients": len(set(seen.patient[sel].tolist()))}
        name = f"cam_{mag}.png"
        cam_grid([example(i) for i in shown],
                 f"{model_label} on {mag} {split} images: accuracy {acc:.2f} over {int(sel.sum())} images", out / name)
        figures.append({"file": name, "kind": "saliency", "magnification": mag,
                        "caption": f"{mag}: {len(shown)} {split} images as the model saw them, "
                                   f"each followed by the saliency of its predicted class ({method}); the "
                                   f"prediction is green when right, red when wrong."})
        step()
    return figures, accuracy


def outcome_figures(groups: dict[str, dict[str, list[int]]], example: ExampleOf, per_row: int, out: Path
                    ) -> list[dict[str, Any]]:
    """The ``errors_<class>.png`` entries: one TP / FP / FN grid per class of ``groups``."""
    figures = []
    for name, picks in groups.items():
        file = f"errors_{name}.png"
        outcome_grid(name, {o: [example(i) for i in picks[o]] for o in OUTCOMES}, per_row, out / file)
        counts = ", ".join(f"{o} {len(picks[o])}" for o in OUTCOMES)
        figures.append({"file": file, "kind": "outcomes", "class": name,
                        "caption": f"{name}: true positives, false positives (predicted {name}, another class "
                                   f"is true) and false negatives ({name} predicted as another class); shown: "
                                   f"{counts}; maps for the predicted class."})
    return figures


def tsne_figures(seen: Predictions, classes: list[str], model: str, split: str, seed: int, out: Path
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(silhouette scores and sizes of the features, the ``tsne.png`` entry when there are at least 5 points)."""
    feats, y = seen.features, seen.y
    mag_labels = np.asarray(seen.magnification).astype(str)
    tsne_info = {"silhouette_class": silhouette(feats, y), "silhouette_magnification": silhouette(feats, mag_labels),
                 "n_points": int(len(feats)), "feature_dim": int(feats.shape[1])}
    if len(feats) < 5:
        return tsne_info, []
    emb = tsne_embedding(feats, seed)
    sil = ", ".join(f"silhouette by {k.split('_')[1]} {v:+.2f}" for k, v in tsne_info.items()
                    if k.startswith("silhouette") and v is not None)
    tsne_figure(emb, y, classes, mag_labels, f"t-SNE of {model} pooled features ({len(feats)} "
                f"{split} images; {sil})", out / "tsne.png")
    return tsne_info, [{"file": "tsne.png", "kind": "tsne",
                        "caption": f"t-SNE of the {tsne_info['feature_dim']}-d pooled features of "
                                   f"{len(feats)} {split} images, coloured by class (left) and by "
                                   f"magnification (right). Silhouette (cosine, in feature space): {sil or 'n/a'}; "
                                   "a magnification silhouette near or above the class one means the features "
                                   "separate by magnification - the shift behind the cross-magnification gap."}]
