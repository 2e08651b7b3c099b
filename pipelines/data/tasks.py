"""Classification tasks on an image store: which label each image carries, and the names of the classes.

- ``subtype``: the store's own classes (BreakHis: the eight tumour types), label = ``store.label``.
- ``binary``: benign vs malignant, label = ``store.malignant`` (0 = benign, 1 = malignant).

Every path that needs labels or class names (the loaders, class weights, metrics, checkpoints, reports) asks
:func:`task_labels`, so a task is one entry in ``_TASKS``. Splits are by patient and do not depend on the task.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from histo_bench.errors import ConfigError
from ingest.breakhis_names import BENIGN

BINARY_CLASSES: tuple[str, ...] = ("benign", "malignant")

_TASKS: dict[str, Callable[[Any], tuple[np.ndarray, tuple[str, ...]]]] = {
    "subtype": lambda store: (np.asarray(store.label, dtype=np.int64), tuple(store.classes)),
    "binary": lambda store: (np.asarray(store.malignant, dtype=np.int64), BINARY_CLASSES),
}
#: The task names, default first.
TASKS: tuple[str, ...] = tuple(_TASKS)


def check_task(task: str) -> str:
    """``task`` when it names a task, else a ValueError listing the tasks."""
    if task not in _TASKS:
        raise ConfigError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    return task


def task_labels(store: Any, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(int64 label of every image of ``store``, class names) for ``task``."""
    return _TASKS[check_task(task)](store)


def task_classes(store: Any, task: str) -> tuple[str, ...]:
    """The class names of ``task`` on ``store`` (the model's output order)."""
    return task_labels(store, task)[1]


def check_scorable(model_task: str, task: str) -> None:
    """A ValueError unless a ``model_task`` model can be scored on ``task`` (the same task, or subtype -> binary)."""
    if check_task(model_task) != check_task(task) and (model_task, task) != ("subtype", "binary"):
        raise ConfigError(f"a {model_task} model cannot be evaluated on the {task} task (it does not predict "
                         f"{task} classes); evaluate it on --task {model_task}")


def map_predictions(store: Any, pred: np.ndarray, model_task: str, task: str) -> np.ndarray:
    """Predictions of a ``model_task`` model expressed in ``task``'s classes: identity for the same task; a subtype
    prediction becomes its class's malignancy for ``binary``. A binary model cannot be scored on subtypes."""
    check_scorable(model_task, task)
    if model_task == task:
        return pred
    # from the store's images; a class without images falls back on the BreakHis benign list
    malignant_of = np.array([name not in BENIGN for name in store.classes], dtype=np.int64)
    malignant_of[np.asarray(store.label)] = np.asarray(store.malignant, dtype=np.int64)
    return malignant_of[np.asarray(pred, dtype=np.int64)]


def describe_task(task: str, classes: list[str] | tuple[str, ...]) -> str:
    """One line for report headings: ``binary task (benign vs malignant)`` / ``subtype task (8 classes)``."""
    check_task(task)
    return f"{task} task ({' vs '.join(classes) if len(classes) <= 2 else f'{len(classes)} classes'})"


def align_classes(store: Any, classes: Sequence[str], task: str) -> Any:
    """``store`` as a model trained on ``classes`` (a checkpoint's, for ``task``) sees it: the store itself when its
    classes are the same list; a view with its labels renumbered when every store class is one of ``classes`` under
    the same name (another order, or a store holding fewer classes); otherwise a :class:`ConfigError` naming both
    lists (scoring by class index across different class lists would be silently wrong)."""

    if check_task(task) != "subtype" or tuple(store.classes) == tuple(classes):
        return store  # binary labels come from the store's malignancy, whatever its class names
    unknown = [c for c in store.classes if c not in classes]
    if unknown or len(set(classes)) != len(classes):
        raise ConfigError(f"{getattr(store, 'path', 'the store')}: its classes {list(store.classes)} differ from "
                          f"the checkpoint's {list(classes)} (not in the checkpoint: {', '.join(unknown) or '-'}); "
                          "give the store the model was trained on, or one whose classes it knows")
    order = np.array([list(classes).index(c) for c in store.classes], dtype=np.int64)
    view = copy.copy(store)
    view.label = order[np.asarray(store.label, dtype=np.int64)]
    view.classes = tuple(classes)
    return view
