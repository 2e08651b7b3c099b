"""Training on a fraction of the labels: a seeded, class-stratified subset of the *train* split's patients.

The semi-supervised protocol of the MPCS study (fine-tuning / linear evaluation with 100% or 20% of the labels):
whole patients are dropped from the train split (never images of a kept patient), stratified by the task's class,
and the val / test splits are untouched, so every label fraction is scored on the same patients.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ingest.splits import SPLIT_CODES, train_subset
from pipelines.data.tasks import task_labels

log = logging.getLogger(__name__)


def label_fraction_view(store: Any, fraction: float, seed: int = 0, task: str = "subtype") -> Any:
    """``store`` for ``fraction == 1``; else a view (``store.with_splits``) whose train split keeps ``fraction``
    of each ``task`` class's train patients (:func:`ingest.splits.train_subset`); the rest become unused."""
    if fraction == 1:
        return store


    labels, _ = task_labels(store, task)
    codes = train_subset(store.patient, labels, store.split, fraction, seed)
    train_before = set(store.patient[store.split == SPLIT_CODES["train"]].tolist())
    train_after = set(store.patient[codes == SPLIT_CODES["train"]].tolist())
    base = store.attrs.get("split", {}).get("description") or "the store's split"
    description = (f"{base}; train restricted to {fraction:g} of its patients per {task} class "
                   f"({len(train_after)} of {len(train_before)}, seed {seed})")
    log.info("label fraction %g: %d of %d train patients kept (%d of %d train images)", fraction, len(train_after),
             len(train_before), int(np.sum(codes == SPLIT_CODES["train"])),
             int(np.sum(store.split == SPLIT_CODES["train"])))
    return store.with_splits(codes, description=description)
