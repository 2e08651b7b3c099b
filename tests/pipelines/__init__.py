"""Tests of the training data path; :func:`make_store` builds the tiny store they share."""

from __future__ import annotations

from pathlib import Path


def make_store(root: Path, size: tuple[int, int] = (64, 96), patients: int = 3, images: int = 2) -> Path:
    """A complete image store of 8 classes x ``patients`` x (40X, 100X) x ``images`` random images of ``size``."""
    from ingest.breakhis import IngestConfig, ingest_breakhis
    from tests.conftest import write_tree

    tree = root / "tree"
    write_tree(tree, patients=patients, images=images, size=size)
    out = root / "store.zarr"
    ingest_breakhis(IngestConfig(root=str(tree), out=str(out), workers=1))
    return out
