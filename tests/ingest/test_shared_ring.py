"""The shared ring the ingest's workers hand encoded images through: bytes come out as they went in, an image too
large for its place or a machine without room for the ring falls back to the pipe with the same store, and no
segment outlives the ingest."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ingest import shared_ring
from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.shared_ring import SharedRing
from tests.ingest import procs

SHM = Path("/dev/shm")


def _segments() -> set[str]:
    return {p.name for p in SHM.iterdir()} if SHM.is_dir() else set()


def test_put_and_take_round_trip_and_an_oversized_blob_is_refused():
    before = _segments()
    ring = SharedRing.create(slots=2, items=3, raw_bytes=100)
    assert ring is not None
    try:
        slot = ring.slot(1)
        blobs = [bytes([j]) * (50 + j) for j in range(3)]
        places = [slot.put(j, blob) for j, blob in enumerate(blobs)]
        assert all(p is not None for p in places)
        assert [ring.take(p) for p in places] == blobs
        assert places[0][0] == 3 * ring.item_bytes  # slot 1 starts after slot 0's three places
        assert slot.put(0, b"x" * (ring.item_bytes + 1)) is None  # travels by pipe instead
    finally:
        ring.close()
        shared_ring._ATTACHED.pop(slot.name).close()  # this process attached as a worker would
    ring.close()  # idempotent
    assert _segments() == before


def test_no_ring_when_too_large_or_when_the_memory_cannot_be_reserved(monkeypatch):
    before = _segments()
    monkeypatch.setattr(shared_ring, "MAX_RING_BYTES", 1000)
    assert SharedRing.create(slots=2, items=4, raw_bytes=1000) is None
    monkeypatch.undo()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)  # a /dev/shm too small: refused here, no SIGBUS later
    assert SharedRing.create(slots=2, items=4, raw_bytes=1000) is None
    assert _segments() == before  # the segment made before the refusal is removed


def test_the_pipe_fallback_writes_the_same_store_and_no_segment_is_left(tiny_tree, tmp_path, monkeypatch):
    before = _segments()
    ring, pipe = tmp_path / "ring.zarr", tmp_path / "pipe.zarr"
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(ring), workers=2, shard_size=8))
    assert _segments() == before
    monkeypatch.setattr(shared_ring, "MAX_RING_BYTES", 0)  # every image through the pool's pipe
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(pipe), workers=2, shard_size=8))
    a, b = procs.store_digest(ring), procs.store_digest(pipe)
    a.pop("zarr.json"), b.pop("zarr.json")  # the root attrs hold timings
    assert a == b, procs.diff(a, b)


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this platform")
def test_an_interrupted_ingest_leaves_no_segment(tiny_tree, tmp_path, monkeypatch):
    before = _segments()
    calls = []

    def interrupt(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(tmp_path / "s.zarr"), workers=2, shard_size=4),
                        progress=lambda done, total: interrupt(done, total))
    assert _segments() == before
