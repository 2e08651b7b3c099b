"""BreakHis naming: classes, magnifications, and the file-name / folder grammar of the public dataset.

A BreakHis file name carries everything: ``SOB_B_TA-14-4659-40-001.png`` is biopsy procedure ``SOB``,
tumour group ``B`` (benign) / ``M`` (malignant), tumour type ``TA`` (tubular adenoma), patient (slide) id
``14-4659``, magnification ``40`` and sequence number ``001``. The original tree is
``BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<class>/SOB_<B|M>_<type>_<patient>/<mag>X/<file>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from histo_bench.errors import ConfigError, HistoBenchError

#: The eight classes, benign first, in the order used for integer labels everywhere.
CLASSES: tuple[str, ...] = (
    "adenosis",
    "fibroadenoma",
    "phyllodes_tumor",
    "tubular_adenoma",
    "ductal_carcinoma",
    "lobular_carcinoma",
    "mucinous_carcinoma",
    "papillary_carcinoma",
)
#: Tumour-type code in the file name -> class folder name.
CODE_TO_CLASS: dict[str, str] = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
CLASS_TO_CODE: dict[str, str] = {v: k for k, v in CODE_TO_CLASS.items()}
BENIGN: frozenset[str] = frozenset(CLASSES[:4])
MAGNIFICATIONS: tuple[str, ...] = ("40X", "100X", "200X", "400X")
#: Named magnification selections; "mixed" is the 100X + 400X pool of the DeiT/Swin study.
MAGNIFICATION_GROUPS: dict[str, tuple[str, ...]] = {"mixed": ("100X", "400X"), "all": MAGNIFICATIONS}

_NAME = re.compile(
    r"^(?P<procedure>[A-Z]+)_(?P<group>[BM])_(?P<code>[A-Z]+)-(?P<patient>\d+-[0-9A-Za-z]+)"
    r"-(?P<mag>\d+)-(?P<seq>\d+)$"
)


class BreakHisNameError(HistoBenchError, ValueError):
    """A file name or folder that does not follow the BreakHis grammar (message says why)."""


@dataclass(frozen=True)
class BreakHisName:
    """The fields parsed out of one BreakHis file name."""

    procedure: str
    class_name: str
    patient: str
    magnification: str
    seq: int

    @property
    def malignant(self) -> bool:
        return self.class_name not in BENIGN


def tumour_group(class_name: str) -> str:
    """``"benign"`` or ``"malignant"`` for a class name."""
    if class_name not in CLASS_TO_CODE:
        raise BreakHisNameError(f"unknown class {class_name!r} (known: {', '.join(CLASSES)})")
    return "benign" if class_name in BENIGN else "malignant"


def parse_name(path: str | PurePath) -> BreakHisName:
    """Parse a BreakHis file name (the folders are not consulted); raises :class:`BreakHisNameError` with the reason."""
    stem = PurePath(path).stem
    m = _NAME.match(stem)
    if m is None:
        raise BreakHisNameError(
            f"file name {PurePath(path).name!r} does not follow the BreakHis pattern "
            "SOB_<B|M>_<type>-<year>-<patient>-<mag>-<seq> (e.g. SOB_B_A-14-22549AB-40-001.png)"
        )
    code = m["code"]
    if code not in CODE_TO_CLASS:
        raise BreakHisNameError(f"unknown tumour type code {code!r} in {PurePath(path).name!r} "
                         f"(known: {', '.join(CODE_TO_CLASS)})")
    class_name = CODE_TO_CLASS[code]
    expected_group = "B" if class_name in BENIGN else "M"
    if m["group"] != expected_group:
        raise BreakHisNameError(f"{PurePath(path).name!r}: group {m['group']!r} contradicts tumour type {code!r}")
    mag = f"{int(m['mag'])}X"
    if mag not in MAGNIFICATIONS:
        raise BreakHisNameError(f"{PurePath(path).name!r}: magnification {mag} is not one of "
                                f"{', '.join(MAGNIFICATIONS)}")
    return BreakHisName(m["procedure"], class_name, m["patient"], mag, int(m["seq"]))


def relative_path(class_name: str, patient: str, magnification: str, seq: int, procedure: str = "SOB") -> PurePath:
    """Where an image lives in the original tree, relative to the dataset root (``BreaKHis_v1/...``)."""
    code = CLASS_TO_CODE[class_name]
    group = "B" if class_name in BENIGN else "M"
    mag = magnification.rstrip("X")
    folder = f"{procedure}_{group}_{code}_{patient}"
    name = f"{procedure}_{group}_{code}-{patient}-{mag}-{seq:03d}.png"
    return PurePath("BreaKHis_v1", "histology_slides", "breast", tumour_group(class_name), procedure,
                    class_name, folder, f"{mag}X", name)


def resolve_magnifications(selection: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Expand a magnification selection: ``None``/"all" -> all four, "mixed" -> 100X+400X, "100X", a
    comma-separated string ("40X,400X") or a list; order is kept, repeats dropped."""
    if selection is None:
        return MAGNIFICATIONS
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    out: list[str] = []
    for item in items:
        key = str(item).strip()
        if key.lower() in MAGNIFICATION_GROUPS:
            out.extend(MAGNIFICATION_GROUPS[key.lower()])
            continue
        mag = key.upper() if key.upper().endswith("X") else f"{key}X"
        if mag not in MAGNIFICATIONS:
            raise ConfigError(f"unknown magnification {item!r}: use one of {', '.join(MAGNIFICATIONS)}, "
                             f"'mixed' or 'all'")
        out.append(mag)
    return tuple(dict.fromkeys(out))
