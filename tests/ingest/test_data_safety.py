"""Data safety under faults, with real subprocesses and real signals: ``--out`` never deletes a user's folder, two
workers on one store never corrupt it, a SIGKILL leaves no process behind and nothing that looks complete, and the
rerun gives the uninterrupted result."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ingest.breakhis import IngestConfig, IngestError, ingest_breakhis
from ingest.slide_store import SlideStore, slide_problem
from ingest.store import ImageStore, is_complete, partial_path
from tests.conftest import write_slides, write_tree
from tests.ingest import procs

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

TILE_ARGS = ("--mag", "20", "--mag", "10", "--tile-size", "128", "--tissue-threshold", "0.3")


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return write_slides(tmp_path_factory.mktemp("safety-slides"), 4, 3072, 2048, seed=10, prefix="slide-")


@pytest.fixture(scope="module")
def clean_tiles(slides, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("safety-clean") / "tiles.zarr"
    res = procs.run("tile", slides, "--out", out, *TILE_ARGS)
    assert res.returncode == 0, res.stderr
    return procs.store_digest(out)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> Path:
    """A tree big enough that an ingest takes a few seconds (so it can be killed in the middle)."""
    root = tmp_path_factory.mktemp("safety-tree") / "breakhis"
    write_tree(root, patients=4, mags=("40X", "100X", "200X"), images=5, size=(230, 350))
    return root


@pytest.fixture(scope="module")
def clean_images(big_tree, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("safety-clean-images") / "images.zarr"
    res = procs.run("breakhis", big_tree, "--out", out, "--shard-size", "8")
    assert res.returncode == 0, res.stderr
    return procs.store_digest(out)


def _user_folder(path: Path) -> dict:
    (path / "notes").mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    (path / "notes" / "day1.md").write_text("ideas")
    return procs.store_digest(path)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_store_survives_tile_and_breakhis(tmp_path, slides, tiny_tree, overwrite):
    target = tmp_path / "mine"
    before = _user_folder(target)
    extra = ["--overwrite"] if overwrite else []
    tile = procs.run("tile", slides / "slide-0.tiff", "--out", target, *TILE_ARGS)
    ingest = procs.run("breakhis", tiny_tree, "--out", target, *extra)
    for res in (tile, ingest):
        assert res.returncode == 1, res.stderr
        assert "is not a histo-bench" in res.stderr and "nothing in it was touched" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert procs.store_digest(target) == before
    assert not partial_path(target).exists()


def test_a_store_of_the_other_kind_is_refused(tmp_path, slides, tiny_tree):
    tiles = tmp_path / "tiles.zarr"
    assert procs.run("tile", slides / "slide-0.tiff", "--out", tiles, *TILE_ARGS).returncode == 0
    before = procs.store_digest(tiles)
    res = procs.run("breakhis", tiny_tree, "--out", tiles, "--overwrite")
    assert res.returncode == 1 and "histo-bench/slide-store store, not a histo-bench image store" in res.stderr
    assert procs.store_digest(tiles) == before
    images = tmp_path / "images.zarr"
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(images), workers=1))
    res = procs.run("tile", slides / "slide-0.tiff", "--out", images, *TILE_ARGS)
    assert res.returncode == 1 and "not a histo-bench slide store" in res.stderr and is_complete(images)


def test_an_empty_folder_may_become_a_store(tmp_path, tiny_tree):
    (tmp_path / "empty").mkdir()
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(tmp_path / "empty"), workers=1))
    assert is_complete(tmp_path / "empty")


@pytest.mark.parametrize("trial", range(3))
def test_two_tilers_on_the_same_slides_then_a_rerun_equal_a_clean_run(tmp_path, slides, clean_tiles, trial):
    out = tmp_path / "tiles.zarr"
    # one run tiles serially, the other with a worker pool: they meet on the same slides in different orders
    a = procs.start("tile", slides, "--out", out, "--workers", "1", *TILE_ARGS)
    b = procs.start("tile", slides, "--out", out, "--workers", "2", *TILE_ARGS)
    for proc in (a, b):
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    rerun = procs.run("tile", slides, "--out", out, *TILE_ARGS)
    assert rerun.returncode == 0 and "already complete 4" in " ".join(rerun.stdout.split()), rerun.stdout
    got = procs.store_digest(out)
    assert procs.diff(got, clean_tiles) == []


def test_two_ingests_into_one_store_wait_for_each_other(tmp_path, big_tree, clean_images):
    out = tmp_path / "images.zarr"
    a = procs.start("breakhis", big_tree, "--out", out, "--shard-size", "8")
    b = procs.start("breakhis", big_tree, "--out", out, "--shard-size", "8")
    errs = []
    for proc in (a, b):
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        errs.append(err)
    assert any("waiting for it" in e or "already complete" in e for e in errs), errs
    got = procs.store_digest(out)
    assert procs.diff(got, clean_images) == []
    assert not partial_path(out).exists() and not out.with_name(out.name + ".lock").exists()


def _kill_when(proc: subprocess.Popen, ready, what: str) -> list:
    """SIGKILL ``proc`` once ``ready()`` holds; return the processes of its group still alive 3 s later."""
    procs.wait_for(lambda: ready() or proc.poll() is not None, 120, what)
    assert proc.poll() is None, f"the run finished before {what}"
    pgid = procs.kill_group_leader(proc)
    return procs.survivors_after(pgid, 3.0)


def _shard_files(folder: Path) -> int:
    chunks = folder / "c"
    return sum(1 for p in chunks.rglob("*") if p.is_file()) if chunks.exists() else 0


@pytest.mark.parametrize("moment", ["decoding", "half", "late"])
def test_sigkill_mid_ingest_leaves_no_process_and_the_rerun_is_the_clean_store(tmp_path, big_tree, clean_images,
                                                                               moment):
    out = tmp_path / "images.zarr"
    shards = {"decoding": 0, "half": 30, "late": 45}[moment]  # of 60 shard files
    proc = procs.start("breakhis", big_tree, "--out", out, "--shard-size", "8", "--workers", "2")
    images = partial_path(out) / "images"
    if shards == 0:
        # main + resource tracker + forkserver + 2 decoders
        ready = lambda: len(procs.group_members(proc.pid)) >= 5  # noqa: E731
    else:
        ready = lambda: _shard_files(images) >= shards  # noqa: E731
    left = _kill_when(proc, ready, f"{moment} of the ingest")
    assert left == [], f"processes of the killed ingest still alive after 3 s: {left}"
    assert not is_complete(out)
    with pytest.raises(Exception, match="interrupted ingest|no such store"):
        ImageStore(out)
    rerun = procs.run("breakhis", big_tree, "--out", out, "--shard-size", "8")
    assert rerun.returncode == 0, rerun.stderr
    got = procs.store_digest(out)
    assert procs.diff(got, clean_images) == []


@pytest.mark.parametrize("moment", ["first slide", "second slide"])
def test_sigkill_mid_tiling_leaves_no_process_and_the_rerun_is_the_clean_store(tmp_path, slides, clean_tiles,
                                                                               moment):
    out = tmp_path / "tiles.zarr"
    proc = procs.start("tile", slides, "--out", out, "--workers", "2", *TILE_ARGS)
    finished = {"first slide": 0, "second slide": 1}[moment]

    def ready() -> bool:
        if not out.exists():
            return False
        done = sum(slide_problem(out, f"slide-{i}") is None for i in range(4))
        return done >= finished and any(p.name.endswith(".partial") for p in out.iterdir())

    left = _kill_when(proc, ready, f"tiling the {moment}")
    assert left == [], f"processes of the killed tiler still alive after 3 s: {left}"
    assert len(SlideStore(out).slide_ids()) < 4
    time.sleep(0.5)  # nothing may go on writing into the store after the kill
    frozen = procs.store_digest(out)
    time.sleep(1.0)
    assert procs.store_digest(out) == frozen
    rerun = procs.run("tile", slides, "--out", out, *TILE_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    got = procs.store_digest(out)
    assert procs.diff(got, clean_tiles) == []


def test_a_clean_run_leaves_no_process_behind(tmp_path, tiny_tree):
    proc = procs.start("breakhis", tiny_tree, "--out", tmp_path / "s.zarr", "--workers", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert procs.survivors_after(proc.pid, 0.0) == []


def _interrupted_ingest(tree: Path, out: Path) -> IngestConfig:
    """Ingest ``tree`` into ``out`` with 8-image shards, interrupted after 30 images (a resumable partial store)."""

    def interrupt(done, total):
        if done == 30:
            raise KeyboardInterrupt

    config = IngestConfig(root=str(tree), out=str(out), workers=1, shard_size=8)
    with pytest.raises(KeyboardInterrupt):
        ingest_breakhis(config, progress=interrupt)
    return config


def test_a_partial_store_whose_arrays_are_gone_is_discarded_with_a_note(tmp_path, tiny_tree, caplog):
    out = tmp_path / "s.zarr"
    config = _interrupted_ingest(tiny_tree, out)
    shutil.rmtree(partial_path(out) / "images")  # what a second writer's rmtree used to leave
    summary = ingest_breakhis(config)
    assert not summary.resumed and summary.images == 96 and is_complete(out)
    assert any("discarding the partial store" in r.message and "'images' is missing" in r.message
               for r in caplog.records)


def test_overwrite_always_discards_a_partial_store(tmp_path, tiny_tree, caplog):
    out = tmp_path / "s.zarr"
    _interrupted_ingest(tiny_tree, out)
    summary = ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(out), workers=1, shard_size=8,
                                           overwrite=True))
    assert not summary.resumed and is_complete(out)
    assert any("--overwrite discards it" in r.message for r in caplog.records)


def test_a_decompression_bomb_is_skipped_like_any_corrupt_file(tmp_path, tiny_tree):
    from ingest.breakhis_names import relative_path
    from tests.ingest.bad_files import write_bomb_png

    bomb = tiny_tree / relative_path("adenosis", "14-9999", "40X", 1)
    bomb.parent.mkdir(parents=True)
    write_bomb_png(bomb)
    res = procs.run("breakhis", tiny_tree, "--out", tmp_path / "s.zarr", "--workers", "2")
    assert res.returncode == 3, res.stderr  # the store was written, one file skipped
    assert "Traceback" not in res.stderr
    line = next(ln for ln in res.stdout.splitlines() + res.stderr.splitlines() if "14-9999" in ln)
    assert "decompression bomb" in line
    assert len(ImageStore(tmp_path / "s.zarr")) == 96


def test_a_bomb_slide_or_mask_fails_only_itself(tmp_path, slides):
    from ingest.tiling import TileConfig, tile_slide
    from tests.ingest.bad_files import write_bomb_png

    write_bomb_png(tmp_path / "bomb.png", 40000, 40000)
    res = tile_slide(tmp_path / "bomb.png", tmp_path / "t.zarr", TileConfig(reader="tifffile"))
    assert res.status == "failed" and "bomb" in res.error
    masks = tmp_path / "masks"
    masks.mkdir()
    write_bomb_png(masks / "slide-0.png", 40000, 40000)
    res = tile_slide(slides / "slide-0.tiff", tmp_path / "t.zarr", TileConfig(masks=str(masks)))
    assert res.status == "failed" and "bomb" in res.error


def test_images_store_unchanged_after_a_refused_overwrite_of_a_non_store(tmp_path, tiny_tree):
    target = tmp_path / "results"
    before = _user_folder(target)
    with pytest.raises(IngestError, match="nothing in it was touched"):
        ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(target), workers=1, overwrite=True))
    assert procs.store_digest(target) == before


def test_a_slide_whose_name_is_dots_fails_alone_and_deletes_nothing(tmp_path, slides):
    from ingest.tiling import TileConfig, tile_slide

    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "precious.txt").write_text("keep me")
    for name in ("...tiff", "..tif", "a.partial.tiff"):
        odd = tmp_path / name
        shutil.copy(slides / "slide-0.tiff", odd)
        res = tile_slide(odd, parent / "tiles.zarr", TileConfig())
        assert res.status == "failed" and "rename the file" in res.error, res
    assert sorted(p.name for p in parent.iterdir()) == ["precious.txt"]  # refused before the store was made
    assert (parent / "precious.txt").read_text() == "keep me"


def test_out_dot_names_the_current_folder(tmp_path, tiny_tree):
    work = tmp_path / "work"
    work.mkdir()
    res = subprocess.run(procs.ingest_cmd("breakhis", tiny_tree, "--out", "."), cwd=work, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert is_complete(work)


def _init_race(root: str, trials: int, barrier, results) -> None:
    """One of the racing tilers: for each trial, wait for the others, then create store ``s<trial>.zarr``."""
    from ingest.slide_store import SlideStoreError, init_store

    for trial in range(trials):
        barrier.wait()
        try:
            init_store(f"{root}/s{trial}.zarr")
            results.put((trial, "ok"))
        except SlideStoreError as exc:
            results.put((trial, str(exc)))


def test_racing_tilers_never_take_a_new_store_for_a_user_folder(tmp_path):
    from ingest.workers import mp_context

    ctx, trials = mp_context(), 10
    barrier, results = ctx.Barrier(4), ctx.Queue()  # the barrier is cyclic: each trial starts all four at once
    workers = [ctx.Process(target=_init_race, args=(str(tmp_path), trials, barrier, results)) for _ in range(4)]
    for w in workers:
        w.start()
    outcome = sorted(results.get(timeout=60) for _ in range(4 * trials))
    for w in workers:
        w.join(timeout=60)
    assert outcome == sorted((t, "ok") for t in range(trials) for _ in range(4)), outcome
    for trial in range(trials):
        path = tmp_path / f"s{trial}.zarr"
        assert sorted(p.name for p in path.iterdir()) == ["zarr.json"]


def test_a_new_store_root_left_half_created_by_a_kill_is_finished_without_its_scratch(tmp_path):
    from ingest import locks
    from ingest.slide_store import init_store

    killed = subprocess.Popen(["true"])
    killed.wait()
    path = tmp_path / "s.zarr"
    path.mkdir()
    (path / f".zarr.json.{killed.pid}.{locks._machine_tag()}.0f0f0f0f.tmp").write_bytes(b'{"zarr_format"')  # cut
    init_store(path)
    assert sorted(p.name for p in path.iterdir()) == ["zarr.json"]
