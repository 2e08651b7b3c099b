"""The shared ring the ingest's workers hand encoded images through: bytes come out as they went in, a slot is
reused only once its images are taken (written), an image too large for its place or a machine without room for the
ring falls back to the pipe with the same store, and no segment outlives the ingest (nor, for long, a killed one)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from concurrent.futures import Future

import pytest

from ingest import image_pool, shared_ring
from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.image_pool import ImagePool
from ingest.shards import blosc_codec, image_blosc_config
from ingest.shared_ring import PREFIX, SHM_DIR, SharedRing
from tests.ingest import procs

needs_ring = pytest.mark.skipif(not SHM_DIR.is_dir() or not hasattr(os, "posix_fallocate"),
                                reason="no /dev/shm or posix_fallocate: the ring is never used here")


def _rings() -> set[str]:
    """The rings on this machine (any other segment is none of these tests' business)."""
    return {p.name for p in SHM_DIR.glob(f"{PREFIX}*")} if SHM_DIR.is_dir() else set()


@pytest.fixture
def made(monkeypatch) -> list[str]:
    """The names of the rings made while the test runs."""
    names: list[str] = []
    create = SharedRing.create.__func__

    def spy(cls, *args, **kwargs):
        ring = create(cls, *args, **kwargs)
        if ring is not None:
            names.append(ring.name)
        return ring

    monkeypatch.setattr(SharedRing, "create", classmethod(spy))
    return names


@pytest.fixture
def tracker_kept(monkeypatch):
    """Nothing stops multiprocessing's resource tracker during the test (it would remove a ring the code forgot);
    stopped after it."""
    monkeypatch.setattr(image_pool, "stop_helpers", lambda: None)
    yield
    monkeypatch.undo()
    image_pool.stop_helpers()


@needs_ring
def test_put_and_view_round_trip_and_an_oversized_blob_is_refused():
    ring = SharedRing.create(slots=2, items=3, raw_bytes=100)
    assert ring is not None and ring.name.startswith(f"{shared_ring._owner()}-")
    name = ring.name
    try:
        slot = ring.slot(1)
        blobs = [bytes([j]) * (50 + j) for j in range(3)]
        places = [slot.put(j, blob) for j, blob in enumerate(blobs)]
        assert all(p is not None for p in places)
        views = [ring.view(p) for p in places]
        assert [bytes(v) for v in views] == blobs and all(v.readonly for v in views)
        for v in views:
            v.release()
        assert places[0][0] == 3 * ring.item_bytes  # slot 1 starts after slot 0's three places
        assert slot.put(0, b"x" * (ring.item_bytes + 1)) is None  # travels by pipe instead
    finally:
        ring.close()
        shared_ring._ATTACHED.pop(slot.name).close()  # this process attached as a worker would
    ring.close()  # idempotent
    assert name not in _rings()


def test_no_ring_when_too_large_or_when_the_memory_cannot_be_reserved(monkeypatch):
    before = _rings()
    monkeypatch.setattr(shared_ring, "MAX_RING_BYTES", 1000)
    assert SharedRing.create(slots=2, items=4, raw_bytes=1000) is None
    monkeypatch.undo()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)  # a /dev/shm too small: refused, no SIGBUS
    assert SharedRing.create(slots=2, items=4, raw_bytes=1000) is None
    assert _rings() <= before  # the segment made before the refusal is removed


class _AtOnce:
    """An executor that runs each task when it is submitted: a worker as fast as can be, writing into its slot
    before the writer has looked at anything."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


@needs_ring
def test_a_slot_is_given_to_the_next_batch_only_once_its_images_are_taken(tiny_tree, made):
    files = sorted(str(p) for p in tiny_tree.rglob("*.png"))
    tasks = [(f, (46, 70), False) for f in files]
    config = image_blosc_config(1)
    expected = [bytes(blosc_codec(config).encode(image_pool.decode_file(*t).image)) for t in tasks]
    assert len(set(expected)) == len(expected)  # every image differs: an overwritten slot would show
    pool = ImagePool(1)
    pool.workers, pool._pool = 2, _AtOnce()  # 2 workers' worth of slots, each refilled the moment it is free
    kept, got = [], []
    try:
        for result in pool.encoded(tasks, config, batch=2):
            got.append(bytes(result.blob))  # copied as taken: a view is valid until the next result
            kept.append(result)
    finally:
        pool._pool = None
        shared_ring._ATTACHED.clear()
    assert got == expected
    assert all(isinstance(r.blob, memoryview) for r in kept)
    with pytest.raises(ValueError, match="released"):  # a view kept past its slot's reuse fails, never misleads
        bytes(kept[0].blob)
    assert len(made) == 1 and made[0] not in _rings()  # closed once every batch was in


@needs_ring
def test_a_small_shared_memory_gets_fewer_batches_in_flight_before_the_pipe(tiny_tree, monkeypatch, caplog):
    """A /dev/shm with room for one batch per worker (not WINDOW = 3) gives a ring of that size, whose slots are
    then reused in turn; with room for none, the images travel by pipe. Both say so in one line."""
    files = sorted(str(p) for p in tiny_tree.rglob("*.png"))
    tasks = [(f, (46, 70), False) for f in files]
    config = image_blosc_config(1)
    expected = [bytes(blosc_codec(config).encode(image_pool.decode_file(*t).image)) for t in tasks]
    room = [2 * 2 * (46 * 70 * 3 + shared_ring.HEADROOM)]  # two workers' batches of two images, once
    reserve = os.posix_fallocate

    def small_shm(fd, offset, length):
        if length > room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        reserve(fd, offset, length)

    asked = []
    create = SharedRing.create.__func__

    def spy(cls, slots, items, raw_bytes):
        ring = create(cls, slots, items, raw_bytes)
        asked.append((slots, ring is not None))
        return ring

    monkeypatch.setattr(os, "posix_fallocate", small_shm)
    monkeypatch.setattr(SharedRing, "create", classmethod(spy))
    for space, rings in ((room[0], [(6, False), (4, False), (2, True)]), (0, [(6, False), (4, False), (2, False)])):
        room[0], asked[:] = space, []
        pool = ImagePool(1)
        pool.workers, pool._pool = 2, _AtOnce()
        caplog.clear()
        try:
            with caplog.at_level("INFO", logger="ingest.image_pool"):
                got = [bytes(r.blob) for r in pool.encoded(tasks, config, batch=2)]
        finally:
            pool._pool = None
            shared_ring._ATTACHED.clear()
        assert got == expected and asked == rings
        assert ("1 batch(es) in flight per worker, not 3" if space else "travel by pipe") in caplog.text


@needs_ring
def test_the_pipe_fallback_writes_the_same_store_and_every_ring_is_removed(tiny_tree, tmp_path, monkeypatch, made,
                                                                           tracker_kept):
    ring, pipe = tmp_path / "ring.zarr", tmp_path / "pipe.zarr"
    taken = []
    view = SharedRing.view
    monkeypatch.setattr(SharedRing, "view", lambda self, place: taken.append(place) or view(self, place))
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(ring), workers=2, shard_size=8))
    assert made and len(taken) == len(list(tiny_tree.rglob("*.png")))  # every image came that way
    assert not set(made) & _rings()
    monkeypatch.setattr(shared_ring, "MAX_RING_BYTES", 0)  # every image through the pool's pipe
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(pipe), workers=2, shard_size=8))
    a, b = procs.store_digest(ring), procs.store_digest(pipe)
    a.pop("zarr.json"), b.pop("zarr.json")  # the root attrs hold timings
    assert procs.diff(a, b) == []


@needs_ring
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no view outlives the ring
def test_an_interrupted_ingest_leaves_no_ring(tiny_tree, tmp_path, made, tracker_kept):
    calls = []

    def interrupt(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(tmp_path / "s.zarr"), workers=2, shard_size=4),
                        progress=lambda done, total: interrupt(done, total))
    assert made and not set(made) & _rings()


def test_the_rings_of_a_killed_writer_are_swept_a_live_ones_and_another_namespaces_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(shared_ring, "SHM_DIR", tmp_path)  # not the machine's /dev/shm: other runs make rings there
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{shared_ring._owner(int(gone.stdout))}-0badc0de"
    live = tmp_path / f"{shared_ring._owner()}-0badc0de"
    elsewhere = tmp_path / f"{PREFIX}1-{int(gone.stdout)}-0badc0de"  # another pid namespace: its pids mean nothing
    for path in (dead, live, elsewhere):
        path.write_bytes(b"ring")
    assert shared_ring.sweep() == [dead.name]
    assert not dead.exists() and live.exists() and elsewhere.exists()


@needs_ring
def test_a_ring_removed_under_the_ingest_only_sends_images_by_pipe(tiny_tree, tmp_path, monkeypatch):
    create = SharedRing.create.__func__

    def removed_at_once(cls, *args, **kwargs):
        ring = create(cls, *args, **kwargs)
        (SHM_DIR / ring.name).unlink()  # before any worker attached (someone's rm /dev/shm/*)
        return ring

    monkeypatch.setattr(SharedRing, "create", classmethod(removed_at_once))
    summary = ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(tmp_path / "s.zarr"), workers=2))
    assert summary.images == len(list(tiny_tree.rglob("*.png")))
