import numpy as np
import pytest

from ingest.splits import (
    SPLIT_CODES,
    SplitConfig,
    SplitError,
    _allocate_by_fraction,
    assert_patient_disjoint,
    patient_split,
)

CLASSES = ("a", "b", "c")


def _data(patients_per_class=(10, 10, 10), images_per_patient=5):
    patients, labels = [], []
    for lab, n in enumerate(patients_per_class):
        for p in range(n):
            patients += [f"p{lab}-{p}"] * images_per_patient
            labels += [lab] * images_per_patient
    return np.array(patients), np.array(labels)


def _patients_by_split(patients, codes):
    return {c: set(patients[codes == c]) for c in set(codes.tolist())}


def test_fraction_split_is_patient_disjoint_stratified_and_deterministic():
    patients, labels = _data()
    res = patient_split(patients, labels, CLASSES, SplitConfig(fractions=(0.6, 0.2, 0.2), seed=3))
    by_split = _patients_by_split(patients, res.codes)
    assert not (by_split[0] & by_split[1]) and not (by_split[0] & by_split[2]) and not (by_split[1] & by_split[2])
    for lab in range(3):  # 10 patients per class -> 6/2/2
        for code, want in ((0, 6), (1, 2), (2, 2)):
            assert len({p for p in by_split[code] if p.startswith(f"p{lab}-")}) == want
    again = patient_split(patients, labels, CLASSES, SplitConfig(fractions=(0.6, 0.2, 0.2), seed=3))
    assert np.array_equal(res.codes, again.codes)
    other = patient_split(patients, labels, CLASSES, SplitConfig(fractions=(0.6, 0.2, 0.2), seed=4))
    assert not np.array_equal(res.codes, other.codes)
    assert res.notes == []


def test_patient_with_two_classes_stays_in_one_split():
    patients, labels = _data()
    patients = np.concatenate([patients, ["p0-0"] * 3])  # p0-0 also has three images of class 2
    labels = np.concatenate([labels, [2, 2, 2]])
    res = patient_split(patients, labels, CLASSES, SplitConfig())
    assert len(set(res.codes[patients == "p0-0"].tolist())) == 1


def test_class_with_too_few_patients_is_reported_not_split():
    patients, labels = _data(patients_per_class=(10, 2, 1))
    res = patient_split(patients, labels, CLASSES, SplitConfig(fractions=(0.7, 0.15, 0.15)))
    assert any(n.startswith("class b has 2 patient(s): no images in val") for n in res.notes)
    assert any(n.startswith("class c has 1 patient(s): no images in val, test") for n in res.notes)
    assert_patient_disjoint(patients, res.codes)


def test_fixed_count_split_takes_whole_patients():
    patients, labels = _data(patients_per_class=(20, 20, 20), images_per_patient=4)
    res = patient_split(patients, labels, CLASSES, SplitConfig(counts=(40, 8, 8)))
    for lab in range(3):
        in_class = labels == lab
        assert [int(np.sum(in_class & (res.codes == c))) for c in (0, 1, 2)] == [40, 8, 8]
        assert int(np.sum(in_class & (res.codes == SPLIT_CODES["unused"]))) == 80 - 56
    assert_patient_disjoint(patients, res.codes)


def test_assert_patient_disjoint_names_the_patient():
    with pytest.raises(SplitError, match="1 patient.*cross splits: bob"):
        assert_patient_disjoint(np.array(["ann", "bob", "bob"]), np.array([0, 0, 2]))


def test_split_config_parse_and_validation():
    assert SplitConfig.parse("140/30/30").counts == (140, 30, 30)
    assert SplitConfig.parse("0.8,0.1,0.1", seed=2) == SplitConfig(fractions=(0.8, 0.1, 0.1), seed=2)
    with pytest.raises(SplitError, match="sum to 1"):
        SplitConfig(fractions=(0.5, 0.1, 0.1))
    with pytest.raises(SplitError, match="cannot parse"):
        SplitConfig.parse("a,b,c")


@pytest.mark.parametrize("n", range(0, 30))
def test_allocation_sums_and_covers_every_split_when_possible(n):
    sizes = _allocate_by_fraction(n, (0.7, 0.15, 0.15))
    assert sum(sizes) == n and min(sizes) >= 0
    if n >= 3:
        assert min(sizes) >= 1
