"""The metrics against a from-the-definitions reference (plain Python loops, nothing shared with
:mod:`pipelines.evaluation.metrics` or scikit-learn), hand-computed cases, and the patient vote."""

import numpy as np
import pytest

from pipelines.evaluation.metrics import classification_metrics, confusion_matrix, full_metrics, patient_vote

NAMES = [f"c{i}" for i in range(5)]


def _reference(y_true: list[int], y_pred: list[int], n: int) -> dict:
    """Confusion matrix, accuracy, balanced accuracy, macro-F1 and per-class numbers, by counting."""
    cm = [[0] * n for _ in range(n)]
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t][p] += 1
    per_class, recalls, f1s = [], [], []
    for i in range(n):
        tp, support, predicted = cm[i][i], sum(cm[i]), sum(row[i] for row in cm)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"precision": precision, "recall": recall, "f1": f1, "support": support})
        if support:
            recalls.append(recall)
        if support or predicted:  # macro-F1 over the classes seen in the truth or the predictions
            f1s.append(f1)
    return {"confusion": cm, "accuracy": sum(cm[i][i] for i in range(n)) / len(y_true),
            "balanced_accuracy": sum(recalls) / len(recalls), "macro_f1": sum(f1s) / len(f1s), "per_class": per_class}


@pytest.mark.parametrize("seed", range(8))
def test_metrics_equal_the_definitions(seed):
    rng = np.random.default_rng(seed)
    n_true = 5 if seed % 2 else 4  # odd seeds: every class true; even: class 4 never true (but predicted)
    y_true = rng.integers(0, n_true, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    if seed % 4 == 0:
        y_pred[y_pred == 3] = 0  # class 3 true but never predicted: precision 0 by zero_division
    if seed % 4 == 2:
        y_true[y_true == 1], y_pred[y_pred == 1] = 0, 0  # class 1 neither true nor predicted: left out of the means
    m = classification_metrics(y_true, y_pred, NAMES)
    ref = _reference(y_true.tolist(), y_pred.tolist(), 5)
    assert m.confusion == ref["confusion"] and m.n_images == 200
    assert m.accuracy == pytest.approx(ref["accuracy"])
    assert m.balanced_accuracy == pytest.approx(ref["balanced_accuracy"])
    assert m.macro_f1 == pytest.approx(ref["macro_f1"])
    for i, name in enumerate(NAMES):
        assert m.per_class[name] == pytest.approx(ref["per_class"][i])
        assert type(m.per_class[name]["support"]) is int and type(m.per_class[name]["f1"]) is float
    assert confusion_matrix(y_true, y_pred, 5).tolist() == ref["confusion"]


def test_unseen_classes_and_no_images():
    m = classification_metrics([2, 2], [2, 2], ["a", "b", "c"])
    assert m.confusion == [[0, 0, 0], [0, 0, 0], [0, 0, 2]]
    assert (m.accuracy, m.balanced_accuracy, m.macro_f1) == (1.0, 1.0, 1.0)  # a and b absent: not averaged in
    assert m.per_class["a"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    m = classification_metrics([0, 0, 1], [0, 2, 1], ["a", "b", "c"])  # c predicted, never true
    assert m.balanced_accuracy == pytest.approx(0.75) and m.macro_f1 == pytest.approx((2 / 3 + 1 + 0) / 3)
    empty = classification_metrics([], [], ["a", "b"])
    assert (empty.accuracy, empty.balanced_accuracy, empty.macro_f1, empty.n_images) == (0.0, 0.0, 0.0, 0)
    assert empty.confusion == [[0, 0], [0, 0]] and empty.per_class["b"]["support"] == 0
    with pytest.raises(ValueError, match="class index 3"):
        classification_metrics([0, 3], [0, 1], ["a", "b"])


def test_known_small_case():
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    assert m.accuracy == 0.75 and m.confusion == [[1, 1], [0, 2]]
    assert m.per_class["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    assert confusion_matrix([2], [0], 3).tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_patient_vote():
    y_true = [0, 0, 0, 1, 1, 1, 1]
    y_pred = [0, 1, 0, 0, 0, 1, 0]
    patients = ["a", "a", "a", "b", "b", "b", "b"]
    acc, n = patient_vote(y_true, y_pred, patients)
    assert (acc, n) == (0.5, 2)  # a: votes 0 (right); b: votes 0 (wrong)
    m = full_metrics(y_true, y_pred, patients, ["x", "y"])
    assert m.patient_accuracy == 0.5 and m.n_patients == 2 and m.n_images == 7
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], ["x", "y"])
