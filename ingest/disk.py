"""Writes that meet the machine's limits: a full disk (or quota) or a read-only output aborts the whole command.

A bad *input* fails only itself (the run goes on); a full disk or a read-only output would fail every remaining
input the same way, so ingest, tiling and feature caching stop at the first such error with one line naming the
file being written (:func:`environment_failure`), and leave what they had finished for a rerun to resume from.
Library code raises; the CLI's one handler (:mod:`histo_bench.command_group`) prints the line.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from histo_bench.errors import DiskFullError, disk_full

#: ``OSError`` numbers after which no further write to the output can succeed.
ABORT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def environment_failure(exc: BaseException, path: str | Path) -> OSError | None:
    """The error to abort with when ``exc`` (raised while writing ``path``) says the output cannot be written at all:
    a :class:`~histo_bench.errors.DiskFullError` for a full disk or quota, an ``OSError`` carrying ``path`` for a
    read-only file system; None for any other error (a bad input, a bug). Picklable: worker processes return it."""
    if isinstance(exc, DiskFullError):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in ABORT_ERRNOS:
        return None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(path, exc)
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def raise_if_environment(exc: BaseException, path: str | Path) -> None:
    """Raise :func:`environment_failure` of ``exc`` (chained) when there is one; return otherwise."""
    failure = environment_failure(exc, path)
    if failure is exc:
        raise exc
    if failure is not None:
        raise failure from exc


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Around zarr writes to ``path``: every chunk is stored, all-zero ones included (so a missing shard file is
    always damage, never "fill value": :mod:`ingest.shards`), and a full disk or read-only output becomes the one
    error of :func:`environment_failure` naming ``path``."""
    import zarr  # here: a caller checking errors only (the ingest before its workers start) need not import it

    try:
        with zarr.config.set({"array.write_empty_chunks": True}):
            yield
    except OSError as exc:
        raise_if_environment(exc, path)
        raise


#: zarr's LocalStore writes a chunk to ``<chunk>.<uuid4 hex>.partial`` and renames it: a kill in between leaves one.
_ZARR_TEMPORARY = re.compile(r".+\.[0-9a-f]{32}\.partial")


#: :class:`ingest.shards.ShardWriter` writes a shard to ``.<shard>.<pid>.<thread id>.tmp`` and renames it.
_SHARD_TEMPORARY = re.compile(r"\.\d+\.\d+\.\d+\.tmp")


def remove_zarr_temporaries(root: str | Path) -> int:
    """Delete the half-written chunk and shard files a killed write left under ``root`` (only zarr's and the shard
    writer's own temporary names; call it only where this process is the store's one writer). Returns how many were
    removed."""
    removed = 0
    for path in Path(root).rglob("*.partial"):
        if path.is_file() and _ZARR_TEMPORARY.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    for path in Path(root).rglob(".*.tmp"):
        if path.is_file() and _SHARD_TEMPORARY.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
