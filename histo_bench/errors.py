"""The error root: every failure the user can fix (bad input, a missing file, an incompatible checkpoint, an option
that does not apply) is a :class:`HistoBenchError`.

The CLIs print such an error as one line naming the thing and the reason and exit with its ``exit_code``
(:mod:`histo_bench.command_group`); any other exception is a bug and shows its traceback. Subclasses keep the
built-in class they always had (``ValueError``, ``KeyError``, ``RuntimeError``) as a second base, so code that caught
those still does.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

#: Exit status of a command that failed on an expected error (documented in the README).
EXIT_ERROR = 1
#: Exit status of ``histo-ingest`` when some inputs were skipped (reported) and the rest completed.
EXIT_SKIPPED = 3


class HistoBenchError(Exception):
    """An expected failure: its message is one line naming the file, option or object and the reason."""

    exit_code: int = EXIT_ERROR


class ConfigError(HistoBenchError, ValueError):
    """A configuration value that cannot work (a config dataclass's ``__post_init__``, a CLI option)."""


class UnknownNameError(HistoBenchError, KeyError):
    """A name that no registry holds; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(HistoBenchError, ImportError):
    """An optional library that a requested feature needs; the message says what to install."""


#: ``OSError`` numbers that describe the machine, not a bug: a full disk or quota, a read-only or forbidden path. The
#: CLIs print them as one line like a :class:`HistoBenchError` (:mod:`histo_bench.command_group`).
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

#: What torch's zip writer raises (a ``RuntimeError``, never an ``OSError``) when the disk or quota fills mid-save.
TORCH_WRITE_FAILED = ("PytorchStreamWriter failed writing", "unexpected pos", "file write failed")


class DiskFullError(HistoBenchError, OSError):
    """A write that failed because the disk (or quota) is full; what was written before is kept."""

    def __str__(self) -> str:  # OSError's would prefix "[Errno 28]"
        return str(self.strerror)


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent); None where it cannot be read."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full(path: str | Path, exc: BaseException) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` when ``exc`` (raised while writing it) says the disk or quota is full:
    an ``OSError`` with errno ENOSPC / EDQUOT, or torch's writer failure (:data:`TORCH_WRITE_FAILED`). Anything else
    (a permission error, a bug) is not one: None, so it keeps its own message or traceback."""
    torch_write = isinstance(exc, RuntimeError) and any(text in str(exc) for text in TORCH_WRITE_FAILED)
    if not (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) and not torch_write:
        return None
    free = free_bytes(path)
    left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
    what = "the write failed: no space left on device or quota exceeded" if torch_write else (
        "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device")
    return DiskFullError(errno.ENOSPC, f"{path}: {what} ({left} in {Path(path).parent}); free some space and rerun")


def environment_message(exc: OSError) -> str | None:
    """One line for an ``OSError`` in :data:`ENVIRONMENT_ERRNOS` that names its path (a full disk also without one),
    None for any other: the path and the reason."""
    if exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    if exc.filename is None and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None  # a permission error with no path (a signal, a semaphore): a bug to see whole
    where = exc.filename if exc.filename is not None else "a write"
    reason = exc.strerror or os.strerror(exc.errno)
    hint = {errno.ENOSPC: "free some space and rerun", errno.EDQUOT: "free some space and rerun",
            errno.EROFS: "choose a writable --out"}.get(exc.errno, "check its permissions or choose another --out")
    return f"{where}: {reason} ({hint})"
