"""The error root: every failure the user can fix (bad input, a missing file, an incompatible checkpoint, an option
that does not apply) is a :class:`HistoBenchError`.

The CLIs print such an error as one line naming the thing and the reason and exit with its ``exit_code``
(:mod:`histo_bench.command_group`); any other exception is a bug and shows its traceback. Subclasses keep the
built-in class they always had (``ValueError``, ``KeyError``, ``RuntimeError``) as a second base, so code that caught
those still does.
"""

from __future__ import annotations

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
