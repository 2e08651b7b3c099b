"""Classification metrics (image level and patient level) and batched prediction.

The image-level numbers come from :mod:`sklearn.metrics`, over every class index ``0 .. len(class_names) - 1``
(``labels=``), so a class missing from a split still has its row, column and per-class entry: accuracy, balanced
accuracy (mean recall over the classes present in the truth), macro-F1 (mean F1 over the classes present in the truth
or the predictions), per-class precision/recall/F1/support (``zero_division=0``: a class never predicted has
precision 0, one never true recall 0) and the confusion matrix (rows = truth). No images: every number is 0.
Patient-level accuracy takes the majority vote of a patient's image predictions (our own, :func:`patient_vote`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn import metrics as sk
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from histo_bench.device import autocast
from histo_bench.errors import ConfigError


@dataclass
class Metrics:
    """Every number one evaluation reports, with what backs it."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    n_images: int
    n_patients: int = 0
    patient_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _labels(y_true, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer label arrays of equal length, every value a class index below ``n_classes``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred must have the same length")
    y_true, y_pred = y_true.ravel(), y_pred.ravel()
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        bad = y[(y < 0) | (y >= n_classes)]
        if bad.size:
            raise ConfigError(f"{name} holds class index {int(bad[0])}, outside 0..{n_classes - 1}")
    return y_true, y_pred


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts, rows = truth, columns = prediction."""

    y_true, y_pred = _labels(y_true, y_pred, n_classes)
    if not y_true.size:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return sk_confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def classification_metrics(y_true, y_pred, class_names: list[str] | tuple[str, ...]) -> Metrics:
    """Image-level metrics for integer labels ``y_true`` / ``y_pred`` over ``class_names``."""

    n = len(class_names)
    y_true, y_pred = _labels(y_true, y_pred, n)
    cm = confusion_matrix(y_true, y_pred, n)
    if not y_true.size:
        zeros = {name: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for name in class_names}
        return Metrics(accuracy=0.0, balanced_accuracy=0.0, macro_f1=0.0, per_class=zeros, confusion=cm.tolist(),
                       n_images=0)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(n), average=None, zero_division=0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(class_names)}
    return Metrics(
        accuracy=float(sk.accuracy_score(y_true, y_pred)),
        # balanced_accuracy_score's definition (mean recall over the classes in y_true), with the labels spelt out so
        # a split holding one class gives no "single label" warning
        balanced_accuracy=float(sk.recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro",
                                                zero_division=0)),
        macro_f1=float(sk.f1_score(y_true, y_pred, labels=np.union1d(y_true, y_pred), average="macro",
                                   zero_division=0)),
        per_class=per_class,
        confusion=cm.tolist(),
        n_images=int(len(y_true)),
    )


def patient_vote(y_true, y_pred, patients) -> tuple[float, int]:
    """Patient-level accuracy: each patient's predicted class is the majority of its images' predictions (ties go
    to the lowest class index), compared with its majority true class. Returns (accuracy, number of patients)."""
    votes: dict[str, Counter] = defaultdict(Counter)
    truth: dict[str, Counter] = defaultdict(Counter)
    for t, p, pat in zip(np.asarray(y_true).tolist(), np.asarray(y_pred).tolist(), list(patients), strict=True):
        votes[pat][p] += 1
        truth[pat][t] += 1

    def majority(c: Counter) -> int:
        top = max(c.values())
        return min(k for k, v in c.items() if v == top)

    if not votes:
        return 0.0, 0
    correct = sum(majority(votes[p]) == majority(truth[p]) for p in votes)
    return correct / len(votes), len(votes)


def full_metrics(y_true, y_pred, patients, class_names) -> Metrics:
    """Image-level metrics plus the patient-level vote."""
    m = classification_metrics(y_true, y_pred, class_names)
    m.patient_accuracy, m.n_patients = patient_vote(y_true, y_pred, patients)
    return m


def predict(model, loader, device, autocast_dtype=None):
    """Logits, labels and store indices for every batch of ``loader`` (``(x, y, idx)`` batches), in loader order."""


    logits, ys, idxs = [], [], []
    model.eval()
    with torch.inference_mode():
        for x, y, idx in loader:
            x = x.to(device, non_blocking=True)
            with autocast(str(device), autocast_dtype):
                out = model(x)
            logits.append(out.float().cpu())
            ys.append(y.cpu())
            idxs.append(idx.cpu())
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(ys), torch.cat(idxs)
