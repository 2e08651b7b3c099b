"""What one GPU-check call carries to the device machine, measured before any GPU time is spent.

A call carries the working tree (tracked + untracked-not-ignored files) plus the wheel folders named in ``carry``
(``.whl/zarr``, ``.whl/cucim``), 64 MiB at most; the check allows itself 60 MiB. Where the wheel folders exist
(here after ``make gpu-wheels``, and on the device machine) their files are measured and checked: every carried
distribution exactly once, each wheel installable on CPython 3.12 manylinux x86_64. Where they do not (CI, which
may not download anything) the sizes recorded in :data:`MANIFEST` when they were last downloaded stand in, and
the report says so. Standard library only.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LIMIT_MIB = 60.0
WHEEL_DIRS = (".whl/zarr", ".whl/cucim")
#: The wheels ``make gpu-wheels`` downloaded (2026-12-02, versions pinned by constraints.txt), sizes in bytes.
MANIFEST = Path(__file__).with_name("wheels.txt")
#: Distribution -> wheel folder: what the device machine lacks and the check needs.
REQUIRED = {"zarr": ".whl/zarr", "numcodecs": ".whl/zarr", "donfig": ".whl/zarr", "msgspec": ".whl/zarr",
            "crc32c": ".whl/zarr", "google_crc32c": ".whl/zarr", "cucim_cu13": ".whl/cucim",
            "nvidia_nvimgcodec_cu13": ".whl/cucim"}
_MIB = 2**20


class CarryError(RuntimeError):
    """The carry would not travel, or would not install there."""


@dataclass
class Carry:
    tree_bytes: int
    wheel_bytes: int
    wheels: dict[str, int]
    source: str  # "measured .whl folders" or "recorded sizes (wheels.txt)"
    problems: list[str] = field(default_factory=list)

    @property
    def total_mib(self) -> float:
        return (self.tree_bytes + self.wheel_bytes) / _MIB

    def line(self) -> str:
        return (f"carry {self.total_mib:.1f} MiB (limit {LIMIT_MIB:g}): project tree {self.tree_bytes / _MIB:.1f} "
                f"MiB + {len(self.wheels)} wheels {self.wheel_bytes / _MIB:.1f} MiB, wheel sizes from {self.source}")

    def as_dict(self) -> dict:
        return {"total_mib": round(self.total_mib, 2), "tree_mib": round(self.tree_bytes / _MIB, 2),
                "wheels_mib": round(self.wheel_bytes / _MIB, 2), "wheel_sizes_from": self.source,
                "wheels": self.wheels, "limit_mib": LIMIT_MIB, "problems": self.problems}


def tree_files(root: Path) -> list[Path]:
    """The files the device tool sends: ``git ls-files`` tracked + untracked-not-ignored, or, without git (the copy
    on the device machine), every file under ``root`` but ``.git``, the wheel folders and caches."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                             check=True, timeout=60).stdout.decode()
        return [root / p for p in out.split("\0") if p and (root / p).is_file()]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".whl", "__pycache__", ".venv"}
        return [Path(d) / f for d, dirs, names in os.walk(root) if not dirs.__setitem__(
            slice(None), [x for x in dirs if x not in skip]) for f in names]


def wheel_problems(names: list[str]) -> list[str]:
    """What is wrong with a set of wheel file names: a required distribution missing or there twice, a wheel that
    CPython 3.12 on manylinux x86_64 cannot install."""
    problems = []
    dists: dict[str, list[str]] = {}
    for name in names:
        m = re.match(r"^(?P<dist>[^-]+)-[^-]+(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$", name)
        if not m:
            problems.append(f"{name}: not a wheel file name")
            continue
        dists.setdefault(m["dist"].lower(), []).append(name)
        py_ok = any(t in ("py3", "cp312") or t.startswith("py3") for t in m["py"].split("."))
        plat_ok = any(t == "any" or (t.startswith("manylinux") and t.endswith("x86_64")) for t in m["plat"].split("."))
        if not (py_ok and plat_ok):
            problems.append(f"{name}: not installable on CPython 3.12, manylinux x86_64")
    for dist in REQUIRED:
        found = dists.get(dist, [])
        if len(found) != 1:
            problems.append(f"{dist}: {len(found)} wheels in {REQUIRED[dist]} (need exactly one)"
                            + (f": {', '.join(found)}" if found else " (run make gpu-wheels)"))
    return problems


def measure(root: Path, wheels_required: bool = False) -> Carry:
    """The carry of a GPU-check call from ``root``; the wheel folders' files when present, else the recorded sizes
    (an error when ``wheels_required``: on the device machine they must have travelled)."""
    tree = sum(p.stat().st_size for p in tree_files(root))
    found = {p.name: p.stat().st_size for d in WHEEL_DIRS if (root / d).is_dir() for p in (root / d).glob("*.whl")}
    if found:
        source = "measured .whl folders"
    elif wheels_required:
        raise CarryError(f"no wheels in {', '.join(WHEEL_DIRS)}: run make gpu-wheels here and name the folders in "
                         "carry")
    else:
        found = read_manifest()
        source = f"recorded sizes ({MANIFEST.name}; no .whl folders here)"
    carry = Carry(tree, sum(found.values()), found, source, wheel_problems(sorted(found)))
    if carry.total_mib > LIMIT_MIB:
        carry.problems.append(f"{carry.total_mib:.1f} MiB is over the {LIMIT_MIB:g} MiB allowed")
    return carry


def read_manifest(path: Path = MANIFEST) -> dict[str, int]:
    """``wheel file name -> bytes`` from the manifest (``<bytes> <name>`` per line, ``#`` comments)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            size, name = line.split()
            out[name] = int(size)
    return out


def write_manifest(root: Path, path: Path = MANIFEST) -> Path:
    """Record the sizes of the wheels now in the wheel folders (after ``make gpu-wheels``)."""
    lines = ["# wheels of .whl/zarr and .whl/cucim (make gpu-wheels): <bytes> <file name>"]
    for d in WHEEL_DIRS:
        lines += [f"{p.stat().st_size} {p.name}" for p in sorted((root / d).glob("*.whl"))]
    path.write_text("\n".join(lines) + "\n")
    return path
