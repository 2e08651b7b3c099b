"""Shared fixtures: tiny BreakHis-layout trees written in milliseconds, and the real sample data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest.breakhis_names import CLASSES, relative_path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_BREAKHIS = SHARED_DATA / "breakhis-sample"
REAL_SVS = SHARED_DATA / "wsi" / "cmu-1-small-region.svs"


def write_tree(root: Path, classes=CLASSES, patients: int = 2, mags=("40X", "100X"), images: int = 2,
               size: tuple[int, int] = (46, 70), seed: int = 0) -> list[Path]:
    """A BreakHis tree of small random RGB PNGs (height x width = ``size``); returns the written paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for c_i, cls in enumerate(classes):
        for p in range(patients):
            patient = f"14-{1000 + 10 * c_i + p}"
            for mag in mags:
                for k in range(1, images + 1):
                    path = root / relative_path(cls, patient, mag, k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
                    paths.append(path)
    return paths


def write_colour_store(root: Path, patients: int, images: int, size: tuple[int, int], noise: float, seed: int,
                       first_patient: int, fractions: tuple[float, float, float]) -> Path:
    """A learnable store: 8 classes whose images differ by colour, ``patients`` per class at 100X and 400X,
    ``images`` per patient and magnification, ingested with a patient-level split; returns the store path."""
    from ingest.breakhis import IngestConfig, ingest_breakhis
    from ingest.splits import SplitConfig

    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 220, (len(CLASSES), 3))
    for c, cls in enumerate(CLASSES):
        for p in range(patients):
            for mag in ("100X", "400X"):
                for k in range(1, images + 1):
                    path = root / "tree" / relative_path(cls, f"14-{first_patient + 10 * c + p}", mag, k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    img = np.clip(palette[c] + rng.normal(0, noise, (*size, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(img).save(path)
    ingest_breakhis(IngestConfig(root=str(root / "tree"), out=str(root / "s.zarr"), workers=1,
                                 split=SplitConfig(fractions=fractions)))
    return root / "s.zarr"


def write_slides(root: Path, n: int, width: int, height: int, seed: int, prefix: str = "s") -> Path:
    """``n`` synthetic 40x slides ``<prefix><i>.tiff`` (seeds ``seed + i``) in ``root``, for the tiling tests'
    module fixtures; returns ``root``."""
    from ingest.synthetic.slide import write_synthetic_slide

    for i in range(n):
        write_synthetic_slide(root / f"{prefix}{i}.tiff", width=width, height=height, seed=seed + i)
    return root


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test: on a 2-core machine shared with other jobs, two OpenMP threads
    spin-wait on each other and small ops (and timing loops) run up to ~100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    """8 classes x 3 patients x 2 magnifications x 2 images of 70x46 px."""
    root = tmp_path / "breakhis"
    write_tree(root, patients=3)
    return root


@pytest.fixture
def real_breakhis() -> Path:
    if not REAL_BREAKHIS.exists():
        pytest.skip(f"real BreakHis sample not present at {REAL_BREAKHIS}")
    return REAL_BREAKHIS


@pytest.fixture(scope="session")
def colour_store(tmp_path_factory):
    """8 classes whose images differ by colour (learnable), 4 patients each, at 100X and 400X."""
    return write_colour_store(tmp_path_factory.mktemp("colour"), patients=4, images=4, size=(40, 60), noise=25,
                              seed=0, first_patient=100, fractions=(0.5, 0.25, 0.25))
