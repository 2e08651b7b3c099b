"""Patient-level, class-stratified train/val/test splits.

No patient ever crosses splits: the unit of assignment is the patient, and :func:`assert_patient_disjoint` checks
it in code wherever splits are made or read. A patient's stratum is the class most of its images belong to (real
BreakHis has a few patients with two tumour types); their other images follow them into the same split.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from histo_bench.errors import HistoBenchError

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Integer code stored per image; images of patients left out by fixed-count splits are ``unused``.
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2, "unused": -1}


class SplitError(HistoBenchError, ValueError):
    """Splits that cannot be made, or a split assignment that lets a patient cross splits."""


@dataclass(frozen=True)
class SplitConfig:
    """How to split patients.

    Attributes:
        fractions: train/val/test fractions of each class's patients (used when ``counts`` is None).
        counts: fixed train/val/test image counts per class, e.g. ``(140, 30, 30)`` as in the DeiT/Swin study;
            whole patients are taken until each count is reached (test first, then val, then train), so counts
            are met approximately; patients beyond them are marked ``unused``.
        seed: the shuffle seed; the same seed and data give the same split.
    """

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    counts: tuple[int, int, int] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions):
            raise SplitError(f"fractions must be three non-negative numbers, got {self.fractions}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise SplitError(f"fractions must sum to 1, got {self.fractions} (sum {sum(self.fractions):.3f})")
        if self.fractions[0] == 0:
            raise SplitError("the train fraction must be > 0")
        if self.counts is not None and (len(self.counts) != 3 or any(c < 0 for c in self.counts)):
            raise SplitError(f"counts must be three non-negative integers, got {self.counts}")

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> SplitConfig:
        """From CLI text: ``"0.7,0.15,0.15"`` (fractions) or ``"140/30/30"`` (images per class)."""
        try:
            if "/" in text:
                counts = tuple(int(x) for x in text.split("/"))
                return cls(counts=counts, seed=seed)  # type: ignore[arg-type]
            fractions = tuple(float(x) for x in text.split(","))
        except ValueError as exc:
            raise SplitError(f"cannot parse split {text!r}: use fractions '0.7,0.15,0.15' or counts '140/30/30'") \
                from exc
        return cls(fractions=fractions, seed=seed)  # type: ignore[arg-type]

    def describe(self) -> str:
        if self.counts is not None:
            return f"{'/'.join(map(str, self.counts))} images per class (whole patients), seed {self.seed}"
        return f"patient fractions {'/'.join(f'{f:g}' for f in self.fractions)} per class, seed {self.seed}"


@dataclass
class SplitResult:
    """A per-image split code array plus what a person should know about it."""

    codes: np.ndarray
    config: SplitConfig
    notes: list[str] = field(default_factory=list)

    def to_attrs(self, patients: np.ndarray) -> dict:
        """JSON-able description saved in the store: config, patients per split, notes."""
        per_split = {name: sorted(set(patients[self.codes == code].tolist())) for name, code in SPLIT_CODES.items()}
        return {"config": asdict(self.config), "description": self.config.describe(), "patients": per_split,
                "notes": self.notes}


def as_str_array(values) -> np.ndarray:
    """A fixed-width numpy str array from a list or any string array (zarr returns numpy's StringDType)."""
    return np.array(np.asarray(values).tolist(), dtype=str)


def stable_seed(seed: int, key: str) -> int:
    """A seed for ``key`` (a class name, a purpose) derived from ``seed``, the same in every process and run."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**32)


def patient_strata(patients, labels) -> dict[str, int]:
    """patient -> the label most of its images carry (ties: the lowest label), patients in sorted order."""
    per_patient: dict[str, Counter] = defaultdict(Counter)
    for p, lab in zip(as_str_array(patients).tolist(), np.asarray(labels).tolist(), strict=True):
        per_patient[p][int(lab)] += 1
    out = {}
    for p in sorted(per_patient):
        top = max(per_patient[p].values())
        out[p] = min(lab for lab, c in per_patient[p].items() if c == top)
    return out


def _allocate_by_fraction(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """How many of ``n`` patients go to train/val/test; every split with a fraction > 0 gets one when n allows."""
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n < len(wanted):  # too few patients: train first, then test, then val
        sizes = [0, 0, 0]
        for i in [i for i in (0, 2, 1) if i in wanted][:n]:
            sizes[i] = 1
        return sizes
    sizes = [max(int(round(n * f)), 1) if f > 0 else 0 for f in fractions]
    while sum(sizes) > n:  # shrink the largest split that can spare a patient (train on ties)
        i = max((i for i in wanted if sizes[i] > 1), key=lambda i: (sizes[i], -i))
        sizes[i] -= 1
    sizes[0] += n - sum(sizes)
    return sizes


def patient_split(patients: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...] | list[str],
                  config: SplitConfig = SplitConfig()) -> SplitResult:
    """Assign every image a split so that each patient's images all share one split.

    Args:
        patients: patient id per image (str).
        labels: class index per image.
        class_names: names for the label indices (used in notes).
        config: fractions or fixed counts, and the seed.
    """
    patients = as_str_array(patients)
    labels = np.asarray(labels)
    if patients.shape != labels.shape:
        raise SplitError("patients and labels must have the same length")
    images_of = Counter(zip(patients.tolist(), (int(v) for v in labels.tolist()), strict=True))  # (patient, label)
    strata: dict[int, list[str]] = defaultdict(list)
    for p, lab in patient_strata(patients, labels).items():
        strata[lab].append(p)

    assignment: dict[str, int] = {}
    for lab in sorted(strata):
        pats = list(strata[lab])
        rng = np.random.default_rng(stable_seed(config.seed, class_names[lab]))
        pats = [pats[i] for i in rng.permutation(len(pats))]
        if config.counts is None:
            sizes = _allocate_by_fraction(len(pats), config.fractions)
            start = 0
            for code, size in zip((0, 1, 2), sizes, strict=True):
                for p in pats[start:start + size]:
                    assignment[p] = code
                start += size
        else:
            targets = {2: config.counts[2], 1: config.counts[1], 0: config.counts[0]}
            filled = {0: 0, 1: 0, 2: 0}
            order = [c for c in (2, 1, 0) if targets[c] > 0]
            for p in pats:
                n_img = images_of[(p, lab)]
                code = next((c for c in order if filled[c] < targets[c]), SPLIT_CODES["unused"])
                assignment[p] = code
                if code >= 0:
                    filled[code] += n_img

    codes = np.array([assignment[p] for p in patients.tolist()], dtype=np.int8)
    assert_patient_disjoint(patients, codes)
    notes = _coverage_notes(labels, codes, class_names, strata)
    return SplitResult(codes=codes, config=config, notes=notes)


def _coverage_notes(labels: np.ndarray, codes: np.ndarray, class_names, strata) -> list[str]:
    notes = []
    for lab in sorted(set(labels.tolist())):
        missing = [name for name, code in SPLIT_CODES.items()
                   if code >= 0 and not np.any((labels == lab) & (codes == code))]
        if missing:
            n_pat = len(strata.get(lab, []))
            notes.append(f"class {class_names[lab]} has {n_pat} patient(s): no images in {', '.join(missing)}")
    return notes


def assert_patient_disjoint(patients: np.ndarray, codes: np.ndarray) -> None:
    """Raise :class:`SplitError` naming the patients whose images sit in more than one split."""
    patients = as_str_array(patients)
    codes = np.asarray(codes)
    seen: dict[str, set[int]] = defaultdict(set)
    for p, c in zip(patients.tolist(), codes.tolist(), strict=True):
        seen[p].add(int(c))
    crossing = sorted(p for p, s in seen.items() if len(s) > 1)
    if crossing:
        raise SplitError(f"{len(crossing)} patient(s) cross splits: {', '.join(crossing[:10])}")


def train_subset(patients: np.ndarray, labels: np.ndarray, codes: np.ndarray, fraction: float,
                 seed: int = 0) -> np.ndarray:
    """Split codes in which only ``fraction`` of each class's *train* patients stay train (at least one per class
    that has any); the others become ``unused``. Val and test are never touched. A patient's class is the label
    most of its images carry (ties: the lowest); the choice is seeded and the same seed gives the same subset."""
    if not 0 < fraction <= 1:
        raise SplitError(f"the label fraction must be in (0, 1], got {fraction}")
    patients = as_str_array(patients)
    codes = np.array(codes, dtype=np.int8, copy=True)
    if fraction == 1:
        return codes
    train = codes == SPLIT_CODES["train"]
    strata: dict[int, list[str]] = defaultdict(list)
    for p, lab in patient_strata(patients[train], np.asarray(labels)[train]).items():
        strata[lab].append(p)
    dropped: set[str] = set()
    for lab, pats in sorted(strata.items()):
        keep = max(1, int(round(fraction * len(pats))))
        order = np.random.default_rng(stable_seed(seed, f"label-fraction:{lab}")).permutation(len(pats))
        dropped.update(pats[i] for i in order[keep:])
    codes[train & np.isin(patients, sorted(dropped))] = SPLIT_CODES["unused"]
    assert_patient_disjoint(patients, codes)
    return codes
