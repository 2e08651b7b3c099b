"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The bytes go to a temporary file in the same folder (pid in its name), are flushed and fsynced, and the temporary
file is renamed over the target; a crash or SIGKILL at any moment leaves the previous file intact (and at worst a
stray ``.<name>.<pid>.tmp``). Every file the project writes in place goes through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, fsync it and rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """``data`` as JSON at ``path``, atomically (values JSON cannot hold are written as ``str``)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str))


def replace_dir(src: str | Path, dst: str | Path) -> Path:
    """Put folder ``src`` at ``dst``: the old ``dst`` (if any) is renamed aside, ``src`` renamed into place, then the
    old one removed. A reader sees the old folder or the new one; a kill in between leaves the old one aside as a
    hidden ``.<name>.old-<pid>`` folder, never a half-written folder under the name."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)
    return dst


def discard_dir(path: str | Path) -> None:
    """Remove a folder the project owns: renamed aside first (atomic), so a kill during the removal leaves a hidden
    ``.<name>.trash-<pid>`` folder, never a half-deleted one under the name."""
    path = Path(path)
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
