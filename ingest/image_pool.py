"""Decode and compress images in worker processes, so the process that writes the store only moves bytes.

Each worker decodes a small batch of files (:func:`ingest.decode.decode_file`), fits them to the store size and
Blosc-encodes each with the store's own codec configuration (:func:`ingest.shards.blosc_codec`), returning the
encoded chunks (or the one-line reason a file is unusable), through shared memory where the machine has it
(:mod:`ingest.shared_ring`), else through the pool's pipe. The writer then puts those bytes straight into shard
files (:meth:`ingest.store_writer.ImageStoreWriter.add_encoded`, :class:`ingest.shards.ShardStream`), from the
shared memory itself: the bytes are exactly those it would have encoded itself,
and decoding and compression run on every core instead of compression running serially in the writer.

An :class:`ImagePool` starts its processes when it is made and :meth:`ImagePool.encoded` submits its first batches
at once, so the workers start up and decode while the caller goes on (discovering files, creating the store): the
ingest's fixed costs overlap its work instead of preceding it. Nothing here imports zarr, so a worker process
forked from a forkserver that preloads this module starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace

from ingest.decode import DecodeError, decode_file
from ingest.shards import blosc_codec
from ingest.shared_ring import RESERVABLE, SharedRing, Slot
from ingest.workers import process_pool, stop_helpers

log = logging.getLogger(__name__)

#: Files per task: few enough to keep both cores fed to the end, enough to make the per-task overhead negligible.
BATCH = 4
#: Batches in flight per worker: enough that a worker never waits for the writer, few enough to bound memory.
WINDOW = 3

#: A task: (path, store size (height, width), resize or only fit).
Task = tuple[str, tuple[int, int], bool]

_CODECS: dict[str, object] = {}  # in each worker: the Blosc codec of each configuration met


@dataclass(frozen=True)
class EncodedImage:
    """One image, decoded, fitted and Blosc-encoded, with what happened to it on the way."""

    #: The encoded chunk; from :meth:`ImagePool.encoded` through shared memory, a read-only view of the worker's
    #: slot, valid only until the next image is taken (write or copy it first; after that it raises on use).
    blob: bytes | memoryview
    orig_size: tuple[int, int]
    notes: tuple[str, ...]
    #: Where in the pool's shared ring the blob is instead (then ``blob`` is empty): (offset, size).
    place: tuple[int, int] | None = None


def _init_worker() -> None:
    from numcodecs import blosc

    blosc.set_nthreads(1)  # one process per core already; Blosc's own threads would only contend


def _ready() -> None:
    """A no-op task: submitting one per worker makes the executor start its processes now."""


def _codec(codec_config: dict):
    key = repr(sorted(codec_config.items()))
    if key not in _CODECS:
        _CODECS[key] = blosc_codec(codec_config)
    return _CODECS[key]


def _encode(task: Task, codec) -> EncodedImage | str:
    path, size, resize = task
    try:
        decoded = decode_file(path, size, resize)
    except DecodeError as exc:
        return str(exc)
    return EncodedImage(bytes(codec.encode(decoded.image)), decoded.orig_size, tuple(decoded.notes))


def encode_batch(tasks: list[Task], codec_config: dict, slot: Slot | None = None) -> list[EncodedImage | str]:
    """Worker entry point: each task's :class:`EncodedImage`, or the reason it was skipped, in order; with a
    ``slot``, each blob that fits is put there and only its place returned."""
    codec = _codec(codec_config)
    results = [_encode(task, codec) for task in tasks]
    if slot is not None:
        for j, result in enumerate(results):
            place = slot.put(j, result.blob) if isinstance(result, EncodedImage) else None
            if place is not None:
                results[j] = replace(result, blob=b"", place=place)
    return results


class ImagePool:
    """``workers`` processes (none when ``workers <= 1``: then everything runs in this process, lazily) that decode
    and encode images; started when made. Use it as a context manager: on the way out, finished or interrupted, the
    pool is shut down (its processes joined, queued work dropped) and multiprocessing's helper processes stopped
    (:func:`ingest.workers.stop_helpers`), so a library caller is left with no process running either."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = None
        self._rings: list[SharedRing] = []
        self._released: list = []  # the worker processes of a released pool, joined on close
        self._drains: list[Iterator] = []  # the result iterators handed out: closed first on close (their views)
        if workers > 1:
            self._pool = process_pool(workers, _init_worker, preload=(__name__,))
            for _ in range(workers):
                self._pool.submit(_ready)

    def encoded(self, tasks: list[Task], codec_config: dict, batch: int = BATCH) -> Iterator[EncodedImage | str]:
        """Every task's result, in task order. The first :data:`WINDOW` batches per worker are submitted before
        this returns; the rest as results are taken (bounded memory). A blob that came through shared memory is
        a view of it, valid until the next result is taken (:attr:`EncodedImage.blob`)."""
        if self._pool is None or not tasks:
            codec = blosc_codec(codec_config)
            return (_encode(task, codec) for task in tasks)
        batches = (tasks[i:i + batch] for i in range(0, len(tasks), batch))
        ring, window = self._ring(batch, tasks[0][1])
        pending: deque[tuple[Future, int]] = deque(
            (self._submit(chunk, codec_config, ring, k), k)
            for k, chunk in enumerate(itertools.islice(batches, window * self.workers)))
        drain = self._drain(pending, batches, codec_config, ring)
        self._drains.append(drain)
        return drain

    def _ring(self, batch: int, size: tuple[int, int]) -> tuple[SharedRing | None, int]:
        """The shared ring for the batches in flight and how many there are per worker: :data:`WINDOW`, fewer where
        shared memory cannot hold that many (a container's 64 MiB ``/dev/shm`` and 8 workers: 3 batches each of
        BreakHis images need 93 MB, 1 needs 31 MB), or no ring (the pipe, :data:`WINDOW` batches) where it cannot
        hold even one."""
        for window in range(WINDOW, 0, -1):  # SharedRing.create says None at once where none can be made
            ring = SharedRing.create(window * self.workers, batch, size[0] * size[1] * 3)
            if ring is not None:
                if window < WINDOW:
                    log.info("shared memory holds %d batch(es) in flight per worker, not %d (/dev/shm too small?)",
                             window, WINDOW)
                self._rings.append(ring)  # removed once every batch is in, else on close (no worker writes then)
                return ring, window
        if RESERVABLE:
            log.info("encoded images travel by pipe: no shared memory for even one batch per worker (-v says why)")
        return None, WINDOW

    def _submit(self, chunk: list[Task], codec_config: dict, ring: SharedRing | None, k: int) -> Future:
        return self._pool.submit(encode_batch, chunk, codec_config, ring.slot(k) if ring is not None else None)

    def _drain(self, pending: deque[tuple[Future, int]], batches: Iterator[list[Task]], codec_config: dict,
               ring: SharedRing | None) -> Iterator[EncodedImage | str]:
        while pending:
            future, k = pending.popleft()
            views: list[memoryview] = []
            try:
                for result in future.result():
                    if isinstance(result, EncodedImage) and result.place is not None:
                        views.append(ring.view(result.place))
                        result = replace(result, blob=views[-1], place=None)
                    yield result
            finally:  # slot k's images are taken (written by the caller): no view of it outlives that
                for view in views:
                    view.release()  # BufferError if the caller kept a buffer of it: loud, not a silent reuse
            nxt = next(batches, None)
            if nxt is not None:  # slot k is free again
                pending.append((self._submit(nxt, codec_config, ring, k), k))
        if ring is not None:  # every batch is in: no worker writes into it any more
            ring.close()
            self._rings.remove(ring)

    def release(self) -> None:
        """Tell the workers to exit once their work is done, without waiting for them (:meth:`close` joins them)."""
        if self._pool is not None:
            # the executor forgets its processes on a shutdown that does not wait: kept to be joined on close
            self._released.extend((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Drop queued work, join the workers and stop the helper processes (idempotent)."""
        if self._pool is None:
            return
        try:
            for drain in self._drains:  # one left mid-way (an interrupt) lets go of its views of the ring now
                with contextlib.suppress(ValueError):  # a drain still running (closed from within)
                    drain.close()
            self._drains = []
            self._pool.shutdown(wait=True, cancel_futures=True)
            for process in self._released:
                process.join()
        finally:
            self._pool, self._released = None, []
            rings, self._rings = self._rings, []
            for ring in rings:
                with contextlib.suppress(BufferError, OSError):  # the tracker removes what is left at exit
                    ring.close()
            gc.collect()  # its queues' semaphores are released now, while the resource tracker still runs
            stop_helpers()  # no forkserver or resource tracker outlives the ingest either

    def __enter__(self) -> ImagePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
