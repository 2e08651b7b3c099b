"""A disk that fills up, and an output folder that is read-only, on real file systems: a tmpfs mounted by the test
(root only; skipped otherwise). ``breakhis``, ``tile`` (worker processes) and MIL feature caching stop at the first
failed write with one line naming the file, mark nothing else failed, leave nothing that looks complete, and once
space is freed the rerun resumes to the result of a clean run."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from histo_bench.errors import DiskFullError
from ingest.cli import app
from ingest.slide_store import check_slide_shards, slide_problem
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig, find_slides
from tests.conftest import write_slides, write_tree
from tests.ingest import procs
from tests.ingest.test_loud_damage import one_error

runner = CliRunner()
TILE_ARGS = ("--mag", "10", "--tile-size", "64", "--tissue-threshold", "0.3")


@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    """A tmpfs mounted at ``where`` for the block; the test is skipped where it cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def grow(where: Path, size: str) -> None:
    """Free space: the tmpfs at ``where`` is made ``size`` big, keeping what it holds."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True, capture_output=True)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    output = res.stdout + res.stderr
    assert res.returncode == 1, output
    assert "Traceback" not in output and "leaked" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full-tree") / "breakhis"
    write_tree(root, patients=3)  # 96 images, ~0.9 MB as a store
    return root


def test_a_full_disk_during_breakhis_is_one_line_and_the_rerun_resumes(tree, tmp_path):
    clean = tmp_path / "clean.zarr"
    assert procs.run("breakhis", tree, "--out", clean, "--shard-size", "8").returncode == 0
    with tmpfs(tmp_path / "disk", "size=300k") as disk:
        res = procs.run("breakhis", tree, "--out", disk / "s.zarr", "--shard-size", "8")
        line = one_error_line(res)
        assert line.startswith(f"error: {disk}/s.zarr.partial/images/c/") and "no space left on device" in line, line
        assert "skipped" not in res.stdout + res.stderr  # no image was marked bad
        assert not (disk / "s.zarr").exists() and (disk / "s.zarr.partial").is_dir()
        assert not list((disk / "s.zarr.partial").rglob("*.tmp"))  # the half-written shard is dropped: no space held
        grow(disk, "4m")
        res = procs.run("breakhis", tree, "--out", disk / "s.zarr", "--shard-size", "8")
        assert res.returncode == 0 and "(resumed)" in res.stderr, res.stdout + res.stderr
        assert procs.diff(procs.store_digest(disk / "s.zarr"), procs.store_digest(clean)) == []


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return write_slides(tmp_path_factory.mktemp("full-slides"), 3, 2048, 1536, seed=30)


def test_a_full_disk_during_tiling_stops_the_workers_and_the_rerun_resumes(slides, tmp_path):
    clean = tmp_path / "clean" / "t.zarr"
    assert procs.run("tile", slides, "--out", clean, *TILE_ARGS).returncode == 0
    with tmpfs(tmp_path / "disk", "size=1200k") as disk:
        res = procs.run("tile", slides, "--out", disk / "t.zarr", *TILE_ARGS, "--workers", "2")
        line = one_error_line(res)
        assert line.startswith(f"error: {disk}/t.zarr") and "no space left on device" in line, line
        assert "failed" not in res.stdout + res.stderr  # no slide was marked failed: the run stopped
        for entry in (disk / "t.zarr").iterdir():  # whatever looks finished is whole
            if entry.is_dir() and not entry.name.endswith(".partial"):
                assert slide_problem(disk / "t.zarr", entry.name) is None
                check_slide_shards(disk / "t.zarr", entry.name, read_index=True)
        assert not [p for p in (disk / "t.zarr").rglob("*.tmp")]
        grow(disk, "16m")
        res = procs.run("tile", slides, "--out", disk / "t.zarr", *TILE_ARGS, "--workers", "2")
        assert res.returncode == 0, res.stdout + res.stderr
        assert procs.diff(procs.store_digest(disk / "t.zarr"), procs.store_digest(clean)) == []


def _fill(disk: Path, leave: int) -> Path:
    """Fill the file system at ``disk`` until ``leave`` bytes are free."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_a_full_disk_while_caching_mil_features_leaves_no_half_array(slides, tmp_path, one_torch_thread):
    from models.mil import feature_extractor
    from pipelines.data.features import cached_features, extract_slide_features, features_key

    model, _ = feature_extractor("resnet34")
    config = TileConfig(magnifications=(10,), tile_size=64, tissue_threshold=0.3)
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        store = disk / "t.zarr"
        assert run_tiling(find_slides(slides)[:1], store, config).count("done") == 1
        clean = shutil.copytree(store, tmp_path / "clean.zarr")
        expected = extract_slide_features(clean, "s0", "10x", "resnet34", model=model)
        filler = _fill(disk, leave=12 * 1024)  # the lock and a group fit, the array does not
        with pytest.raises(DiskFullError, match="no space left on device") as err:
            extract_slide_features(store, "s0", "10x", "resnet34", model=model)
        assert str(err.value).startswith(f"{store}/s0/features/10x/resnet34: no space left on device")
        assert cached_features(store, "s0", "10x", "resnet34") is None  # nothing that looks cached
        assert not [p.name for p in (store / "s0" / "features" / "10x").glob(".*")]  # no aside copy left
        assert not (store / "s0.features.lock").exists()
        filler.unlink()
        again = extract_slide_features(store, "s0", "10x", "resnet34", model=model)
        assert np.array_equal(again, expected)
        key = features_key("s0", "10x", "resnet34")
        cached, reference = zarr.open_group(str(store))[key], zarr.open_group(str(clean))[key]
        assert np.array_equal(cached[:], reference[:]) and dict(cached.attrs) == dict(reference.attrs)


def test_a_read_only_output_is_one_line_for_breakhis_tile_and_demo(tree, slides, tmp_path):
    with tmpfs(tmp_path / "ro", "ro") as ro:
        for args, name in ((["breakhis", str(tree), "--out", str(ro / "s.zarr"), "--workers", "1"], "s.zarr"),
                           (["tile", str(slides), "--out", str(ro / "t.zarr"), *TILE_ARGS], "t.zarr"),
                           (["demo", "--out", str(ro / "demo"), "--patients-per-class", "1", "--images", "1",
                             "--workers", "1"], "demo")):
            line = one_error(runner.invoke(app, args))
            assert str(ro / name) in line and "Read-only file system" in line, line
        assert not list(ro.iterdir())


def test_a_resumed_ingest_drops_the_chunk_file_a_killed_zarr_write_left(tmp_path):
    """zarr writes ``<chunk>.<uuid4 hex>.partial`` then renames it; a SIGKILL in between leaves it (seen once in
    the SIGKILL-mid-ingest test). Only those names go: a slide's ``<id>.partial`` folder and other files stay."""
    from ingest.disk import remove_zarr_temporaries

    stray = tmp_path / "malignant" / "c" / "0.d3a708634c7f474995c9fe98a52428ca.partial"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    kept = [tmp_path / "malignant" / "c" / "0", tmp_path / "notes.partial", tmp_path / "s0.partial" / "zarr.json"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert remove_zarr_temporaries(tmp_path) == 1
    assert not stray.exists() and all(path.exists() for path in kept)


def test_a_resumed_ingest_drops_the_shard_file_a_killed_shard_write_left(tmp_path):
    """The shard writer writes ``.<shard>.<pid>.<thread id>.tmp`` then renames it; a SIGKILL in between leaves it
    (seen once in the SIGKILL-mid-ingest test in CI). Other dot files (a checkpoint's temporary) stay."""
    from ingest.disk import remove_zarr_temporaries

    stray = tmp_path / "images" / "c" / "45" / "0" / "0" / ".0.10471.139695137000320.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a shard")
    kept = [stray.parent / "0", tmp_path / ".last.pt.123.tmp"]
    for path in kept:
        path.write_bytes(b"x")
    assert remove_zarr_temporaries(tmp_path) == 1
    assert not stray.exists() and all(path.exists() for path in kept)
