"""Finding the BreakHis images under a root: each file's class, patient and magnification from its name, checked
against the folders of the original tree; one line for every file that cannot be used, one image per BreakHis name.
"""

from __future__ import annotations

import filecmp
import os
from dataclasses import dataclass
from pathlib import Path

from ingest.breakhis_names import (
    CLASSES,
    MAGNIFICATIONS,
    BreakHisName,
    BreakHisNameError,
    parse_name,
    tumour_group,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
#: Written at the root of generated demo trees; its presence makes reports say "synthetic".
SYNTHETIC_MARKER = "SYNTHETIC_DATA.json"


@dataclass(frozen=True)
class Problem:
    """One input file that was skipped or changed, and why."""

    path: str
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Candidate:
    """An image file whose name and folders passed validation."""

    path: Path
    rel: str
    name: BreakHisName


def _check_folders(rel_parts: tuple[str, ...], name: BreakHisName) -> str | None:
    """Cross-check the folders of an original-tree path against the file name; None when consistent."""
    folders = rel_parts[:-1]
    if "SOB" in folders:
        i = folders.index("SOB")
        if i + 1 < len(folders):
            class_folder = folders[i + 1]
            if class_folder not in CLASSES:
                return f"unknown class folder {class_folder!r} (known: {', '.join(CLASSES)})"
            if class_folder != name.class_name:
                return f"file name says {name.class_name} but it sits in folder {class_folder!r}"
        if i >= 1 and folders[i - 1] in ("benign", "malignant") and folders[i - 1] != tumour_group(name.class_name):
            return f"{name.class_name} is {tumour_group(name.class_name)} but sits under {folders[i - 1]!r}"
    for part in folders:
        if part.endswith("X") and part[:-1].isdigit() and part != name.magnification:
            return f"file name says {name.magnification} but it sits in folder {part!r}"
    return None


def discover(root: Path, magnifications: tuple[str, ...] = MAGNIFICATIONS) -> tuple[list[Candidate], list[Problem]]:
    """All usable BreakHis image files under ``root`` (sorted by magnification, class, patient, sequence) and a
    line for every file that is not usable."""
    candidates: list[Candidate] = []
    problems: list[Problem] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            rel = path.relative_to(root)
            if fname == SYNTHETIC_MARKER:
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.append(Problem(str(rel), f"not an image file (extension {path.suffix or 'none'!r})"))
                continue
            try:
                name = parse_name(fname)
            except BreakHisNameError as exc:
                problems.append(Problem(str(rel), str(exc)))
                continue
            reason = _check_folders(rel.parts, name)
            if reason:
                problems.append(Problem(str(rel), reason))
                continue
            if name.magnification in magnifications:
                candidates.append(Candidate(path, rel.as_posix(), name))
    candidates, duplicates = drop_duplicates(candidates)
    problems.extend(duplicates)
    candidates.sort(key=lambda c: (MAGNIFICATIONS.index(c.name.magnification), CLASSES.index(c.name.class_name),
                                   c.name.patient, c.name.seq, c.rel))
    return candidates, problems


def drop_duplicates(candidates: list[Candidate]) -> tuple[list[Candidate], list[Problem]]:
    """One candidate per BreakHis file name (the name is the image's identity: class, patient, magnification,
    sequence; the extension is ignored): the first by path is kept, every other one is skipped with a line naming
    both paths and whether the two files hold the same bytes."""
    first: dict[str, Candidate] = {}
    kept: list[Candidate] = []
    problems: list[Problem] = []
    for cand in sorted(candidates, key=lambda c: c.rel):
        key = cand.path.stem.upper()
        if key not in first:
            first[key] = cand
            kept.append(cand)
            continue
        other = first[key]
        try:
            same = "the same bytes" if filecmp.cmp(other.path, cand.path, shallow=False) else "different bytes"
        except OSError as exc:
            same = f"not compared: {exc.strerror or exc}"
        problems.append(Problem(cand.rel, f"same BreakHis file name as {other.rel} ({same}); that image is "
                                          "ingested once, from the first path, and this copy is skipped"))
    return kept, problems
