"""The inputs of the bad-input catalogue, built once per session in a few seconds: good stores and checkpoints to
break, broken copies of them, and the mount points (a read-only folder, a full disk) that only root can make.

Everything is real: stores written by the ingest code, checkpoints written by training, broken files made by
truncating or overwriting real ones, file systems mounted with ``mount -t tmpfs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import tests.pipelines.tiny_models  # noqa: F401 - registers tiny_cnn_test
from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig
from pipelines.training.classifier import train
from tests.conftest import write_tree
from tests.ingest.bad_files import write_bomb_png, write_truncated_png
from tests.pipelines.run_helpers import train_config
from tests.pipelines.test_train_cli import write_colour_slide


@dataclass
class World:
    """Paths of every input a case can name (``{name}`` in a case's arguments)."""

    root: Path

    def __getitem__(self, name: str) -> str:
        return str(self.root / name)


def _break_checkpoints(root: Path, good: Path) -> None:
    data = good.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 3])
    (root / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "text.pt").write_text("this is not a checkpoint\n")
    (root / "empty.pt").write_bytes(b"")
    (root / "png.pt").write_bytes((root / "tree.png").read_bytes())


def _break_stores(root: Path, good: Path) -> None:
    other = root / "other_classes.zarr"
    shutil.copytree(good, other)
    meta = json.loads((other / "zarr.json").read_text())
    meta["attributes"]["classes"] = [f"class_{i}" for i in range(len(meta["attributes"]["classes"]))]
    (other / "zarr.json").write_text(json.dumps(meta))
    missing = root / "missing_shard.zarr"
    shutil.copytree(good, missing)
    shard = sorted(p for p in (missing / "images" / "c").rglob("*") if p.is_file())[0]
    shard.unlink()
    truncated = root / "truncated_shard.zarr"
    shutil.copytree(good, truncated)
    shard = sorted(p for p in (truncated / "images" / "c").rglob("*") if p.is_file())[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _odd_folders(root: Path) -> None:
    (root / "empty_dir").mkdir()
    flat = root / "flat_pngs"  # PNGs, but not in BreakHis's folder layout or names
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 100 + i, np.uint8)).save(flat / f"image_{i}.png")
    bad = root / "bad_slides"  # a slide that is text, one cut in half, and a header-only bomb
    bad.mkdir()
    (bad / "notes.svs").write_text("not a slide\n")
    whole = (root / "slides" / "s0.tiff").read_bytes()
    (bad / "half.tiff").write_bytes(whole[: len(whole) // 2])
    (bad / "good.tiff").write_bytes(whole)
    bombs = root / "bomb_tree"
    write_tree(bombs, classes=("adenosis", "fibroadenoma"), patients=1, mags=("100X",), images=2)
    target = next(bombs.rglob("*.png"))
    write_bomb_png(target)
    write_truncated_png(next(p for p in bombs.rglob("*.png") if p != target))
    dup = root / "dup_tree"  # one image copied into a second folder of the tree
    write_tree(dup, classes=("adenosis",), patients=2, mags=("100X",), images=2)
    first = sorted(dup.rglob("*.png"))[0]
    (dup / "extra").mkdir()
    shutil.copy(first, dup / "extra" / first.name)
    (root / "labels_bad.csv").write_text("slide,diagnosis\ns0,benign\n")
    (root / "a_file.txt").write_text("a file where a folder goes\n")


def build_world(root: Path) -> World:
    """Write every input under ``root`` (about 10 s on 2 cores)."""
    tree = root / "tree"
    write_tree(tree, patients=3, mags=("100X", "400X"), images=2, size=(40, 60))
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "tree.png")
    ingest_breakhis(IngestConfig(root=str(tree), out=str(root / "img.zarr"), workers=1))
    slides = root / "slides"
    slides.mkdir()
    paths = [write_colour_slide(slides / f"s{i}.tiff", (200, 120, 170) if i % 2 else (120, 90, 180), seed=i,
                                width=768, height=512) for i in range(6)]
    (slides / "labels.csv").write_text("slide_id,label\n" + "".join(
        f"s{i},{'benign' if i % 2 else 'malignant'}\n" for i in range(6)))
    run_tiling(paths, root / "tiles.zarr", TileConfig(magnifications=(10,), tile_size=32, tissue_threshold=0.3))
    result = train(train_config(root / "img.zarr", root, epochs=1, out=str(root / "cls")))
    _break_checkpoints(root, result.run_dir / "best.pt")
    _break_stores(root, root / "img.zarr")
    _odd_folders(root)
    return World(root)


def train_mil(world: World) -> str:
    """A MIL checkpoint on the slide store (trained on first use: the few cases that need one)."""
    from typer.testing import CliRunner

    from benchmark.cli.app import app

    best = world.root / "mil" / "best.pt"
    if not best.exists():
        result = CliRunner().invoke(app, ["train", "--model", "abmil", "--data", world["tiles.zarr"], "--labels",
                                          world["slides/labels.csv"], "--extractor", "resnet34", "--max-tiles", "8",
                                          "--epochs", "1", "--device", "cpu", "--out", str(best.parent)])
        assert result.exit_code == 0, result.output
    return str(best)


def _mount(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@contextlib.contextmanager
def mounted(where: Path, options: str):
    """A tmpfs mounted at ``where`` with ``options`` for the block (yields False where it cannot be: not root, or
    no mount permission in this container); unmounted after."""
    ok = _mount(where, options)
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
