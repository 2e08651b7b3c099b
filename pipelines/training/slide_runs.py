"""What the slide-level recipes (attention MIL, slide fusion) share: the labels CSV, slide splits grouped by patient,
the checks and settling of their configs, and the one error they raise.

Slides are split like patients (``ingest.splits``, stratified by label; a ``patient`` column in the CSV groups
several slides of one patient), so no patient's slides sit in two splits.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from histo_bench.device import resolve_device
from histo_bench.errors import ConfigError, HistoBenchError
from ingest.slide_store import SlideStore, SlideStoreError
from ingest.splits import SPLIT_CODES, SplitConfig, patient_split
from pipelines.training.cv import CVError, describe_folds, fold_splits

log = logging.getLogger(__name__)


class MILError(HistoBenchError, ValueError):
    """Bad labels, slides without tiles, or nothing to train on; the message names what."""


def check_slide_run(config) -> None:
    """The checks a slide recipe's config shares (:class:`MILConfig`, ``SlideFusionConfig``): folds and step cap."""
    if config.folds == 1 or config.folds < 0 or not 0 <= config.fold < max(config.folds, 1):
        raise ConfigError(f"folds must be 0 (one split) or >= 2, and fold in 0..folds-1; got folds {config.folds}, "
                         f"fold {config.fold}")
    if config.max_steps_per_epoch is not None and config.max_steps_per_epoch < 1:
        raise ConfigError("max_steps_per_epoch must be >= 1 (or None)")


def settle_slide_config(config):
    """A slide recipe's config (:class:`MILConfig`, ``SlideFusionConfig``) with its scale (default: the store's
    first) and its device resolved; a store that is not a slide store is a :class:`MILError` naming it."""

    try:
        store = SlideStore(config.store)
        scale = config.scale or store.default_scale()
    except SlideStoreError as exc:
        raise MILError(str(exc)) from exc
    scales = {s for sid in store.slide_ids() for s in store.slide(sid).attrs.get("scales", {})}
    if scale not in scales:
        raise MILError(f"{config.store}: no slide has tiles at --scale {scale} (it has {', '.join(sorted(scales))})")
    return replace(config, scale=scale, device=resolve_device(config.device))


def read_labels(path: str | Path, slide_ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """slide -> label and slide -> patient from the CSV; slides missing from the store are an error, store slides
    missing from the CSV are left out with a warning."""
    path = Path(path)
    if not path.exists():
        raise MILError(f"{path}: no such labels file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"slide_id", "label"} <= set(reader.fieldnames):
            raise MILError(f"{path}: needs the columns slide_id,label (found {reader.fieldnames})")
        rows = list(reader)
    labels = {r["slide_id"]: r["label"] for r in rows}
    patients = {r["slide_id"]: r.get("patient") or r["slide_id"] for r in rows}
    unknown = sorted(set(labels) - set(slide_ids))
    if unknown:
        raise MILError(f"{path}: {len(unknown)} labelled slide(s) are not in the store: {', '.join(unknown[:5])}")
    unlabelled = sorted(set(slide_ids) - set(labels))
    if unlabelled:
        log.warning("%d slide(s) have no label and are left out: %s", len(unlabelled), ", ".join(unlabelled[:5]))
    return labels, patients


def split_slides(slides: list[str], labels: dict[str, str], patients: dict[str, str], classes: list[str],
                 fractions: tuple[float, float, float], seed: int) -> tuple[dict[str, list[str]], list[str]]:
    """train/val/test slide lists, stratified by label, with every patient's slides in one split; and the notes
    on classes too small to reach every split."""
    y = np.array([classes.index(labels[s]) for s in slides])
    split = patient_split(np.array([patients[s] for s in slides]), y, classes,
                          SplitConfig(fractions=fractions, seed=seed))
    by_split = {name: [s for s, c in zip(slides, split.codes, strict=True) if c == code]
                for name, code in SPLIT_CODES.items() if code >= 0}
    return by_split, split.notes


def fold_slides(slides: list[str], labels: dict[str, str], patients: dict[str, str], classes: list[str],
                folds: int, fold: int, seed: int) -> tuple[dict[str, list[str]], list[str]]:
    """train/val/test slide lists of fold ``fold`` of a patient-grouped, label-stratified k-fold split
    (:func:`pipelines.training.cv.fold_splits`, the image trainer's folds applied to slides)."""
    from types import SimpleNamespace


    table = SimpleNamespace(patient=np.array([patients[s] for s in slides]), classes=tuple(classes),
                            label=np.array([classes.index(labels[s]) for s in slides], dtype=np.int64))
    try:
        codes = fold_splits(table, folds, fold, seed)
    except CVError as exc:
        raise MILError(f"{exc} (slides are grouped by patient)") from exc
    by_split = {name: [s for s, c in zip(slides, codes, strict=True) if c == code]
                for name, code in SPLIT_CODES.items() if code >= 0}
    return by_split, [describe_folds(folds, fold, seed, "label")]
