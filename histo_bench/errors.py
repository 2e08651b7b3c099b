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

#: Below this many free bytes a failed write is taken for a full disk (torch's zip writer reports ENOSPC as a
#: ``RuntimeError`` about file positions, never as an ``OSError``).
NEARLY_FULL = 16 * 2**20


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
    """A :class:`DiskFullError` naming ``path`` when ``exc`` (raised while writing it) comes from a full disk."""
    free = free_bytes(path)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or (free is not None
                                                                                  and free < NEARLY_FULL):
        left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        return DiskFullError(errno.ENOSPC, f"{path}: no space left on device ({left} in {Path(path).parent}); "
                                           "free some space and rerun")
    return None


def environment_message(exc: OSError) -> str | None:
    """One line for an ``OSError`` in :data:`ENVIRONMENT_ERRNOS` (None for any other): the path and the reason."""
    if exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else "a write"
    reason = exc.strerror or os.strerror(exc.errno)
    hint = {errno.ENOSPC: "free some space and rerun", errno.EDQUOT: "free some space and rerun",
            errno.EROFS: "choose a writable --out"}.get(exc.errno, "check its permissions or choose another --out")
    return f"{where}: {reason} ({hint})"
