"""Decode and compress images in worker processes, so the process that writes the store only moves bytes.

Each worker decodes a small batch of files (:func:`ingest.decode.decode_file`), fits them to the store size and
Blosc-encodes each with the store's own codec configuration (:func:`ingest.shards.blosc_codec`), returning the
encoded chunks (or the one-line reason a file is unusable). The writer then puts those bytes straight into shard
files (:meth:`ingest.shards.ShardWriter.write_encoded`): the bytes are exactly those it would have encoded itself,
and decoding and compression run on every core instead of compression running serially in the writer.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from ingest.decode import DecodeError, decode_file
from ingest.shards import blosc_codec
from ingest.workers import process_pool, stop_helpers

#: Files per task: few enough to keep both cores fed to the end, enough to make the per-task overhead negligible.
BATCH = 4

#: A task: (path, store size (height, width), resize or only fit).
Task = tuple[str, tuple[int, int], bool]

_WORKER: dict = {}


@dataclass(frozen=True)
class EncodedImage:
    """One image, decoded, fitted and Blosc-encoded, with what happened to it on the way."""

    blob: bytes
    orig_size: tuple[int, int]
    notes: tuple[str, ...]


def _init_worker(codec_config: dict) -> None:
    from numcodecs import blosc

    blosc.set_nthreads(1)  # one process per core already; Blosc's own threads would only contend
    _WORKER["codec"] = blosc_codec(codec_config)


def _encode(task: Task, codec) -> EncodedImage | str:
    path, size, resize = task
    try:
        decoded = decode_file(path, size, resize)
    except DecodeError as exc:
        return str(exc)
    return EncodedImage(bytes(codec.encode(decoded.image)), decoded.orig_size, tuple(decoded.notes))


def encode_batch(tasks: list[Task]) -> list[EncodedImage | str]:
    """Worker entry point: each task's :class:`EncodedImage`, or the reason it was skipped, in order."""
    codec = _WORKER["codec"]
    return [_encode(task, codec) for task in tasks]


def encoded_images(tasks: list[Task], codec_config: dict, workers: int, batch: int = BATCH
                   ) -> Iterator[EncodedImage | str]:
    """Every task's result, in task order, from ``workers`` processes (in this process when ``workers <= 1``),
    with at most a few batches per worker in flight (bounded memory). The pool is shut down (its processes joined)
    and multiprocessing's helper processes stopped (:func:`ingest.workers.stop_helpers`) before this returns or
    raises, so a library caller is left with no process running either."""
    if workers <= 1:
        codec = blosc_codec(codec_config)
        for task in tasks:
            yield _encode(task, codec)
        return
    batches = [tasks[i:i + batch] for i in range(0, len(tasks), batch)]
    window = 3 * workers
    pending: deque[Future] = deque()
    pool = process_pool(workers, _init_worker, (codec_config,), preload=(__name__,))
    try:
        it = iter(batches)
        for chunk in it:
            pending.append(pool.submit(encode_batch, chunk))
            if len(pending) >= window:
                break
        while pending:
            results = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(encode_batch, nxt))
            yield from results
    finally:  # done, or interrupted (an error, Ctrl-C, the consumer stopped): drop queued work, join the workers
        pool.shutdown(wait=True, cancel_futures=True)
        del pool, pending
        gc.collect()  # its queues' semaphores are released now, while the resource tracker still runs
        stop_helpers()  # no forkserver or resource tracker outlives the ingest either
