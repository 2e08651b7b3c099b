"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The bytes go to a temporary file in the same folder (pid in its name), are flushed and fsynced, and the temporary
file is renamed over the target; a crash or SIGKILL at any moment leaves the previous file intact (and at worst a
stray ``.<name>.<pid>.tmp``). Every file the project writes in place goes through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import json
import os
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
