"""Classification metrics (image level and patient level) and batched prediction.

The metric functions are plain numpy and match scikit-learn's definitions (tested against it): accuracy, balanced
accuracy (mean recall over the classes present), macro-F1 over all classes (a class absent from both truth and
predictions scores 0, as scikit-learn's ``zero_division=0``), per-class precision/recall/F1/support, and the
confusion matrix (rows = truth). Patient-level accuracy takes the majority vote of a patient's image predictions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


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


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(y_true, y_pred, class_names: list[str] | tuple[str, ...]) -> Metrics:
    """Image-level metrics for integer labels ``y_true`` / ``y_pred`` over ``class_names``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred must have the same length")
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    present = support > 0
    # scikit-learn's macro-F1 averages over the labels present in y_true or y_pred
    labelled = present | (predicted > 0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(class_names)}
    return Metrics(
        accuracy=float(tp.sum() / max(len(y_true), 1)),
        balanced_accuracy=float(recall[present].mean()) if present.any() else 0.0,
        macro_f1=float(f1[labelled].mean()) if labelled.any() else 0.0,
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
    import torch

    from histo_bench.device import autocast

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
