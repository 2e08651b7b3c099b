"""The one CLI error handler: a typer group that turns a :class:`~histo_bench.errors.HistoBenchError` raised by any
command into one line on stderr and the error's exit code; so does an ``OSError`` of the machine's state (a full
disk, a read-only or forbidden path: :data:`~histo_bench.errors.ENVIRONMENT_ERRNOS`). Any other exception propagates
with its traceback (rich's, from typer): a bug is never shortened to ``error: 'x'``.

    app = typer.Typer(cls=HandledGroup, ...)
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from histo_bench.console import console
from histo_bench.errors import EXIT_ERROR, HistoBenchError, environment_message


def print_error(message: str) -> None:
    """The one form of an error line."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)


def one_line(message: str) -> str:
    """An expected error's own message: a torch DataLoader worker re-raises it as "Caught X in DataLoader worker
    process N" + the worker's traceback, whose last line holds it (``pkg.X: message``)."""
    if "\nOriginal Traceback" not in message:
        return message
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    name, sep, rest = last.partition(": ")
    return rest if sep and " " not in name else last


class HandledGroup(TyperGroup):
    """A typer group whose commands' expected errors end as one line (see the module docstring)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HistoBenchError as exc:
            print_error(one_line(str(exc)))
            raise typer.Exit(exc.exit_code) from None  # typer's own Exit: click's is not caught there
        except OSError as exc:  # a full disk, a read-only or forbidden folder: the machine's state, not a bug
            message = environment_message(exc)
            if message is None:
                raise
            print_error(message)
            raise typer.Exit(EXIT_ERROR) from None
