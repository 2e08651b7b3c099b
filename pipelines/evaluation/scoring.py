"""``histo-bench evaluate`` for the checkpoints that are not image classifiers.

- ``mil`` and ``slide_fusion``: slide-level metrics on a split of the run's own slide split (``splits.json`` beside
  the checkpoint), labels from the run's CSV (or ``labels``); ``all`` scores every labelled slide of the store.
- ``mpcs``: an encoder has no classes, so it is scored the standard way for self-supervised encoders, by a linear
  probe: a logistic regression (scikit-learn) fitted on the frozen encoder's features of the store's train split
  and scored on ``split``, per magnification. Labels are used only for the probe.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ingest.slide_store import SlideStore
from pipelines.data.tasks import task_labels
from pipelines.evaluation.metrics import Metrics, classification_metrics
from pipelines.evaluation.predict import encoder_features
from pipelines.training.checkpoint import Checkpoint
from pipelines.training.cv import store_for_run
from pipelines.training.slide_runs import MILError, read_labels


def _slides_of(ckpt: Checkpoint, split: str, labels: dict[str, str]) -> list[str]:
    if split == "all":
        return sorted(labels)
    splits = ckpt.path.parent / "splits.json" if ckpt.path else None
    if splits is None or not splits.exists():
        raise MILError(f"{ckpt.path}: no splits.json beside it to take the {split} slides from; use --split all")
    chosen = json.loads(splits.read_text()).get(split)
    if chosen is None:
        raise MILError(f"{splits}: no {split!r} split (use train, val, test or all)")
    return [s for s in chosen if s in labels]


def score_slides(ckpt: Checkpoint, store_path: str | Path, labels_path: str | Path | None, split: str,
                 device: str) -> tuple[Metrics, int]:
    """(slide-level metrics, slides without tiles left out) of a MIL or slide-fusion checkpoint on ``split``."""

    store = SlideStore(store_path)
    labels_path = labels_path or ckpt.config.get("labels")
    if not labels_path:
        raise MILError("give --labels: the checkpoint does not name its labels CSV")
    labels = read_labels(labels_path, store.slide_ids())[0]
    slides = _slides_of(ckpt, split, labels)
    unknown = sorted({labels[s] for s in slides} - set(ckpt.classes))
    if unknown:
        raise MILError(f"{labels_path}: label(s) {', '.join(unknown)} are not among the checkpoint's classes "
                       f"{ckpt.classes}")
    scale = ckpt.config.get("scale") or store.default_scale()
    model = ckpt.build(device)
    if ckpt.kind == "mil":
        from pipelines.training.mil import _predict, slide_bags

        bags = slide_bags(store_path, slides, scale, ckpt.config["extractor"], ckpt.config.get("extractor_weights"),
                          device)
        probs = {s: _predict(model, bags[s], device)[0] for s in slides if s in bags}
    else:
        from pipelines.evaluation.predict import slide_fusion_probs

        probs = {s: p for s in slides if (p := slide_fusion_probs([model], store, s, scale, device)) is not None}
    if not probs:
        raise MILError(f"{store_path}: none of the {len(slides)} {split} slide(s) has tiles at {scale}")
    scored = sorted(probs)
    metrics = classification_metrics([ckpt.classes.index(labels[s]) for s in scored],
                                     [int(np.argmax(probs[s])) for s in scored], ckpt.classes)
    return metrics, len(slides) - len(scored)


def linear_probe(ckpt: Checkpoint, store_path: str | Path, split: str, magnifications: list[str], task: str,
                 device: str) -> list[tuple[str, Metrics]]:
    """(magnification, metrics) of a logistic-regression probe on the MPCS encoder's features: fitted on the train
    split at that magnification, scored on ``split``."""


    store = store_for_run(ckpt.config, str(store_path) if store_path else None)  # the run's split (its fold)
    labels, classes = task_labels(store, task)
    model, size = ckpt.build(device), int(ckpt.config.get("image_size", 224))
    results = []
    for mag in magnifications:
        train_idx, test_idx = store.select(split="train", magnification=mag), store.select(split=split,
                                                                                          magnification=mag)
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise MILError(f"{store.path}: no {'train' if len(train_idx) == 0 else split} images at {mag} for the "
                           "linear probe")
        train_x = encoder_features(model, store, train_idx, size, device)
        scaler = StandardScaler().fit(train_x)
        probe = LogisticRegression(max_iter=2000).fit(scaler.transform(train_x), labels[train_idx])
        pred = probe.predict(scaler.transform(encoder_features(model, store, test_idx, size, device)))
        results.append((mag, classification_metrics(labels[test_idx], pred, list(classes))))
    return results
