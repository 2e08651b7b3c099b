import numpy as np
import pytest

from pipelines.evaluation.metrics import classification_metrics, confusion_matrix, full_metrics, patient_vote

sklearn_metrics = pytest.importorskip("sklearn.metrics")
NAMES = [f"c{i}" for i in range(5)]


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5 if seed % 2 else 4, 200)  # odd seeds: every class; even: class 4 never true
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    m = classification_metrics(y_true, y_pred, NAMES)
    assert m.accuracy == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    assert m.macro_f1 == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, average="macro", zero_division=0))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert m.balanced_accuracy == pytest.approx(sklearn_metrics.balanced_accuracy_score(y_true, y_pred))
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    for i, name in enumerate(NAMES):
        assert m.per_class[name] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert np.array_equal(m.confusion, sklearn_metrics.confusion_matrix(y_true, y_pred, labels=range(5)))


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
