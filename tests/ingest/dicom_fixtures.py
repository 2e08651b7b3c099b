"""The small DICOM whole-slide fixtures that openslide-python's source distribution ships (``boxes_0.dcm``,
``boxes_1.dcm``: one 16 x 16 slide in two instances, 0.499 µm/px, 20x), fetched once at install time.

``make install`` runs ``python tests/ingest/dicom_fixtures.py``: it downloads the sdist of the openslide-python
installed here (``pip download --no-binary :all: --no-deps``) into a temporary folder and extracts only those two
files into ``.cache/openslide-fixtures/<version>/boxes/`` (ignored by git; nothing of them is committed). Offline, or
without openslide-python, it says so in one line and exits 0; the tests that need the files then skip, naming this
script. Tests never reach for the network.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILES = ("boxes_0.dcm", "boxes_1.dcm")


def version() -> str | None:
    try:
        return metadata.version("openslide-python")
    except metadata.PackageNotFoundError:
        return None


def fixture_dir(ver: str | None = None) -> Path:
    """Where the fixtures of openslide-python ``ver`` (default: the installed one) live once fetched."""
    return REPO / ".cache" / "openslide-fixtures" / (ver or version() or "none") / "boxes"


def present() -> Path | None:
    """The folder holding both fixtures (a DICOM slide), or None when they have not been fetched."""
    folder = fixture_dir()
    return folder if all((folder / name).is_file() for name in FILES) else None


def fetch(timeout: float = 120.0) -> str:
    """Fetch the fixtures if missing; returns one line saying what happened (never raises for being offline)."""
    ver = version()
    if ver is None:
        return "openslide-python is not installed: DICOM fixtures not fetched"
    if present():
        return f"DICOM fixtures present in {fixture_dir(ver)}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", "-d", tmp,
               f"openslide-python=={ver}"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
        except (subprocess.SubprocessError, OSError):
            return f"could not download the openslide-python {ver} sdist (offline?): the DICOM fixture tests will skip"
        sdists = sorted(Path(tmp).glob("*.tar.gz"))
        if not sdists:
            return "pip download gave no sdist: the DICOM fixture tests will skip"
        out = fixture_dir(ver)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if name.name in FILES and name.parent.name == "fixtures" and member.isfile():
                    src = tar.extractfile(member)
                    if src is not None:
                        (out / name.name).write_bytes(src.read())
    return f"DICOM fixtures fetched into {out}" if present() else "the sdist lacked the DICOM fixtures"


if __name__ == "__main__":
    print(fetch())
