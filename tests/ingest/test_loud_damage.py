"""Damage is loud, never silent: a missing or truncated shard file of an image or slide store is one error naming
the shard (``info`` checks every shard; reads never return zeros for it), a rerun of the tiler tiles a damaged
slide again, and the same BreakHis file name in two folders is reported and ingested once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from histo_bench.errors import EXIT_ERROR, EXIT_SKIPPED
from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.breakhis_names import relative_path
from ingest.cli import app
from ingest.shards import ShardError
from ingest.slide_store import SlideStore
from ingest.store import ImageStore
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig, find_slides
from tests.conftest import write_slides, write_tree
from tests.ingest import procs

runner = CliRunner()
TILES = TileConfig(magnifications=(10,), tile_size=32, tissue_threshold=0.3, shard_size=8)  # ~40 tiles, 5 shards


def one_error(res, exit_code: int = EXIT_ERROR) -> str:
    """The one ``error:`` line of a command that failed (and nothing that looks like a traceback)."""
    assert res.exit_code == exit_code, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]


@pytest.fixture(scope="module")
def image_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loud-images")
    write_tree(root / "tree", patients=2)  # 64 images, 8 per shard: 8 shards
    ingest_breakhis(IngestConfig(root=str(root / "tree"), out=str(root / "s.zarr"), workers=1, shard_size=8))
    return root / "s.zarr"


def _damaged_copy(store: Path, dst: Path, shard: str, how: str) -> Path:
    shutil.copytree(store, dst)
    path = dst / shard
    if how == "missing":
        path.unlink()
    elif how == "half":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # shorter than its own index
        path.write_bytes(path.read_bytes()[:10])
    return path


@pytest.mark.parametrize("how, reason", [("missing", "shard file is missing"),
                                         ("half", "shard index checksum mismatch"),
                                         ("stub", "truncated shard file")])
def test_a_damaged_image_shard_is_one_error_naming_it(image_store, tmp_path, how, reason):
    shard = _damaged_copy(image_store, tmp_path / "s.zarr", "images/c/3/0/0/0", how)
    line = one_error(runner.invoke(app, ["info", str(tmp_path / "s.zarr")]))
    assert line.startswith(f"error: {shard}: {reason}") and "images 24-31 of 64" in line, line
    assert "--overwrite" in line
    if how == "missing":  # found when the store is opened: one stat per shard
        with pytest.raises(ShardError, match="c/3/0/0/0: shard file is missing"):
            ImageStore(tmp_path / "s.zarr")
        return
    store = ImageStore(tmp_path / "s.zarr")  # opening lists files only; the first read of the shard checks it
    assert np.array_equal(store.read([0, 1]), ImageStore(image_store).read([0, 1]))  # other shards read fine
    with pytest.raises(ShardError, match=f"c/3/0/0/0: {reason}"):
        store.read([25])


def test_info_of_a_sound_store_passes_and_checks_every_shard(image_store):
    assert ImageStore(image_store).verify() == 8
    assert runner.invoke(app, ["info", str(image_store)]).exit_code == 0


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return write_slides(tmp_path_factory.mktemp("loud-slides"), 2, 1536, 1024, seed=20)


@pytest.fixture(scope="module")
def clean_tiles(slides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loud-clean") / "t.zarr"
    assert run_tiling(find_slides(slides), out, TILES).count("done") == 2
    return out


def test_a_damaged_tile_shard_is_loud_and_a_rerun_tiles_the_slide_again(slides, clean_tiles, tmp_path):
    out = tmp_path / "t.zarr"
    shard = _damaged_copy(clean_tiles, out, "s1/tiles/10x/c/1/0/0/0", "missing")
    line = one_error(runner.invoke(app, ["info", str(out)]))
    assert line.startswith(f"error: {shard}: shard file is missing (tiles 8-15 of "), line
    with pytest.raises(ShardError, match="s1/tiles/10x/c/1/0/0/0: shard file is missing"):
        SlideStore(out).slide_ids()  # every command that lists the slides
    summary = run_tiling(find_slides(slides), out, TILES)
    assert [r.status for r in summary.results] == ["skipped", "done"]  # s1 tiled again, s0 left as it was
    assert procs.diff(procs.store_digest(out), procs.store_digest(clean_tiles)) == []
    assert runner.invoke(app, ["info", str(out)]).exit_code == 0


def test_a_truncated_tile_shard_never_reads_as_tiles(clean_tiles, tmp_path):
    out = tmp_path / "t.zarr"
    shard = _damaged_copy(clean_tiles, out, "s0/tiles/10x/c/0/0/0/0", "half")
    line = one_error(runner.invoke(app, ["info", str(out)]))
    assert line.startswith(f"error: {shard}: shard index checksum mismatch"), line
    store = SlideStore(out)
    assert store.slide_ids() == ["s0", "s1"]  # listing stats the files; reading checks their indexes
    assert store.tiles("s1", "10x").shape[1:] == (32, 32, 3)
    with pytest.raises(ShardError, match="s0/tiles/10x/c/0/0/0/0: shard index checksum mismatch"):
        store.tiles("s0", "10x", slice(0, 2))


def test_the_same_file_name_in_two_folders_is_reported_and_ingested_once(tmp_path, caplog):
    tree = tmp_path / "tree"
    write_tree(tree, patients=2)
    original = relative_path("adenosis", "14-1000", "40X", 1)
    copy = tree / "extra" / original.name  # the same bytes in another folder
    copy.parent.mkdir()
    shutil.copy(tree / original, copy)
    other = relative_path("ductal_carcinoma", "14-1040", "100X", 2)
    clash = tree / "more" / other.name  # the same name, other pixels
    clash.parent.mkdir()
    shutil.copy(tree / original, clash)
    res = runner.invoke(app, ["breakhis", str(tree), "--out", str(tmp_path / "s.zarr"), "--workers", "1"],
                        env={"COLUMNS": "250"})
    assert res.exit_code == EXIT_SKIPPED, res.output
    assert "2 file(s) skipped:" in res.output
    assert (f"extra/{original.name}: same BreakHis file name as {original.as_posix()} (the same bytes); that image "
            "is ingested once, from the first path, and this copy is skipped") in res.output
    assert f"more/{other.name}: same BreakHis file name as {other.as_posix()} (different bytes)" in res.output
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(original.name in w and "extra/" in w and original.as_posix() in w for w in warned), warned
    store = ImageStore(tmp_path / "s.zarr")
    assert len(store) == 64 and len(set(store.source().tolist())) == 64
    assert sorted(p["path"] for p in store.attrs["summary"]["skipped"]) == [f"extra/{original.name}",
                                                                             f"more/{other.name}"]
