"""Patient-level k-fold cross-validation: folds grouped by patient and stratified by class.

Every patient belongs to exactly one fold. A patient's stratum is the class most of its images carry *for the task*
(``subtype``: the store's classes; ``binary``: benign / malignant; ties go to the lower label, as in
:func:`ingest.splits.patient_split`), and each class's patients are dealt round-robin over the folds in a seeded
order, the deal continuing where the previous class stopped so the folds also hold equal numbers of patients.

For fold ``k``: test = the patients of fold ``k``; val = a stratified share (``val_fraction``, at least one patient
of every class that has two or more patients left) of the remaining patients, taken from fold ``k + 1`` first, then
``k + 2``, ...; train = the rest. :func:`assert_patient_disjoint` checks every assignment. A class with fewer
patients than folds cannot be in every test fold (real BreakHis has 3 phyllodes-tumour patients): it is logged,
and :func:`classes_missing_from_test` says which folds' test sets lack it (suite reports print that); it is never
fixed by splitting a patient. More folds than patients is a :class:`CVError`.

    folds = patient_folds(store, folds=5, seed=0)                 # {patient: fold}
    codes = fold_splits(store, folds=5, fold=2, seed=0)           # per-image split codes (0 train, 1 val, 2 test)
    view = store.with_splits(codes)                               # an ImageStore whose select(split=...) uses them
    view = split_view(store, folds=5, fold=2, split_seed=0)       # the same in one call (folds=0: ``store`` itself)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

from ingest.splits import (
    SPLIT_CODES,
    SplitError,
    as_str_array,
    assert_patient_disjoint,
    patient_strata,
    stable_seed,
)
from ingest.store import ImageStore
from pipelines.data.tasks import task_labels

log = logging.getLogger(__name__)

#: Default share of the non-test patients of each class used for validation.
VAL_FRACTION = 0.2


class CVError(SplitError):
    """Folds that cannot be made (too few patients in a class, bad fold numbers)."""


def _labels(store: Any, task: str) -> tuple[np.ndarray, tuple[str, ...]]:

    return task_labels(store, task)


def patient_folds(store: Any, folds: int, seed: int = 0, task: str = "subtype") -> dict[str, int]:
    """Fold id (0..folds-1) of every patient of ``store``, grouped by patient and stratified by ``task`` class.

    Raises :class:`CVError` when ``folds`` < 2 or exceeds the number of patients. A class with fewer patients than
    ``folds`` is logged (its patients are dealt like the others; :func:`classes_missing_from_test` lists the folds
    without it).
    """
    if folds < 2:
        raise CVError(f"k-fold cross-validation needs folds >= 2, got {folds}")
    labels, classes = _labels(store, task)
    strata = patient_strata(store.patient, labels)
    if folds > len(strata):
        raise CVError(f"{folds}-fold cross-validation needs at least {folds} patients; the store has {len(strata)}")
    by_class: dict[int, list[str]] = defaultdict(list)
    for p, lab in strata.items():
        by_class[lab].append(p)
    short = {classes[lab]: len(ps) for lab, ps in by_class.items() if len(ps) < folds}
    if short:
        log.warning("%d-fold cross-validation (%s task): %s, fewer than the folds, so some test folds have none "
                    "(a patient is never split)", folds, task,
                    ", ".join(f"{name} has {n} patient(s)" for name, n in sorted(short.items())))
    assignment: dict[str, int] = {}
    offset = 0
    for lab in sorted(by_class):
        pats = sorted(by_class[lab])
        order = np.random.default_rng(stable_seed(seed, f"cv:{classes[lab]}")).permutation(len(pats))
        for k, i in enumerate(order):
            assignment[pats[i]] = (offset + k) % folds
        offset = (offset + len(pats)) % folds
    return assignment


def classes_missing_from_test(store: Any, folds: int, seed: int = 0, task: str = "subtype") -> dict[str, list[int]]:
    """class name -> the folds whose test set has no patient of that class (empty when every class has at least
    ``folds`` patients)."""
    assignment = patient_folds(store, folds, seed, task)
    labels, classes = _labels(store, task)
    strata = patient_strata(store.patient, labels)
    present: dict[int, set[int]] = defaultdict(set)
    for p, f in assignment.items():
        present[strata[p]].add(f)
    return {classes[lab]: sorted(set(range(folds)) - fs) for lab, fs in sorted(present.items())
            if len(fs) < folds}


def fold_splits(store: Any, folds: int, fold: int, seed: int = 0, val_fraction: float = VAL_FRACTION,
                task: str = "subtype") -> np.ndarray:
    """Per-image split codes (:data:`ingest.splits.SPLIT_CODES`) of fold ``fold``: test = that fold, val = a
    stratified ``val_fraction`` of the other patients (next fold first), train = the rest (module docstring)."""
    if not 0 <= fold < folds:
        raise CVError(f"fold must be in 0..{folds - 1}, got {fold}")
    if not 0 < val_fraction < 1:
        raise CVError(f"val_fraction must be in (0, 1), got {val_fraction}")
    assignment = patient_folds(store, folds, seed, task)
    labels, _ = _labels(store, task)
    strata = patient_strata(store.patient, labels)
    code_of = {p: SPLIT_CODES["test"] if f == fold else SPLIT_CODES["train"] for p, f in assignment.items()}
    rest: dict[int, list[str]] = defaultdict(list)
    for p, f in assignment.items():
        if f != fold:
            rest[strata[p]].append(p)
    for lab, pats in rest.items():
        if len(pats) < 2:
            continue  # a lone patient trains
        n_val = min(len(pats) - 1, max(1, int(round(val_fraction * len(pats)))))
        rng = np.random.default_rng(stable_seed(seed + 7919, f"cv:{lab}"))
        tiebreak = rng.permutation(len(pats))
        ranked = sorted(range(len(pats)), key=lambda i: ((assignment[pats[i]] - fold) % folds, tiebreak[i]))
        for i in ranked[:n_val]:
            code_of[pats[i]] = SPLIT_CODES["val"]
    patients = as_str_array(store.patient)
    codes = np.array([code_of[p] for p in patients.tolist()], dtype=np.int8)
    assert_patient_disjoint(patients, codes)
    return codes


def describe_folds(folds: int, fold: int, seed: int, task: str) -> str:
    """One line naming the split, for store attrs and reports."""
    return (f"patient-level {folds}-fold cross-validation stratified by {task} class, fold {fold} as test, "
            f"split seed {seed}")


def split_view(store: Any, folds: int = 0, fold: int = 0, split_seed: int = 0, task: str = "subtype",
               val_fraction: float = VAL_FRACTION):
    """``store`` itself for ``folds == 0`` (the store's own split), else its view with fold ``fold``'s splits."""
    if folds == 0:
        return store
    codes = fold_splits(store, folds, fold, split_seed, val_fraction, task)
    return store.with_splits(codes, description=describe_folds(folds, fold, split_seed, task))


def store_for_run(config: dict[str, Any], store: str | None = None):
    """The store (view) a run was trained on, from its resolved config (``config.json`` / a checkpoint's config):
    opens ``store`` or the config's store and applies the run's folds (runs from before folds: the store's split)."""

    opened = ImageStore(store or config["store"])
    return split_view(opened, int(config.get("folds", 0) or 0), int(config.get("fold", 0) or 0),
                      int(config.get("split_seed", 0) or 0), config.get("task", "subtype"))
