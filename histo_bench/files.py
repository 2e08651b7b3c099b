"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The bytes go to a temporary file in the same folder (pid in its name), are flushed and fsynced, and the temporary
file is renamed over the target; a crash or SIGKILL at any moment leaves the previous file intact (and at worst a
stray ``.<name>.<pid>.tmp``). Every file the project writes in place goes through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from histo_bench.errors import disk_full


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, fsync it and rename it to ``path``. A write that
    fails on a full disk raises :class:`~histo_bench.errors.DiskFullError` naming ``path``; the old file stays."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = disk_full(path, exc) if isinstance(exc, (OSError, RuntimeError)) else None
        with contextlib.suppress(OSError):
            tmp.unlink()
        if full is not None:
            raise full from exc
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


#: The temporary name :func:`atomic_write` gives a run's own outputs (checkpoints, JSON files, the ``complete``
#: marker): ``.<name>.<pid>.tmp``, pid at most 7 digits (Linux's pid_max is 2**22).
_STRAY = re.compile(r"\.(?P<name>[\w.-]+\.(?:pt|pt\.pending|json)|complete)\.(?P<pid>\d{1,7})\.tmp")


def remove_stray_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.<pid>.tmp`` files that :func:`atomic_write` left in ``folder`` when process ``pid`` was
    killed mid-write: only names of a run's outputs (:data:`_STRAY`) and only of processes not alive on this host
    (a folder shared by several hosts should not be written by two at once anyway). Returns what was removed."""
    removed = []
    for tmp in sorted(Path(folder).glob(".*.tmp")):
        match = _STRAY.fullmatch(tmp.name)
        if match is None or pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return True


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` + newline to ``path`` (a log of rows); a failure that names no file (``write`` on a full
    disk) is re-raised naming ``path``."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc


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
