"""Terminal helpers shared by the CLIs: logging through rich, and a rich progress bar as a progress callback.

Library code never prints; it logs and calls a ``progress(done, total)`` callback. Only CLIs use this module.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)
#: Results (tables, summaries) go to stdout so they can be piped; logs and bars go to stderr.
stdout = Console()


class _CurrentStderr(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at each message, never to a stream captured when
    it was made (a test runner's, since closed)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


_handler: logging.Handler | None = None


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Route ``logging`` to rich on stderr: WARNING when quiet, INFO by default, DEBUG with -v.

    Safe to call any number of times: it replaces the handler it installed before and leaves every other root
    handler (a test runner's capture, say) alone."""
    global _handler
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:  # piped or in CI: one unwrapped line per message, so every message stays greppable
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler


class _Rate(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        show = task.fields.get("rate", True) and task.speed
        return Text(f"{task.speed:,.1f}/s" if show else "", style="cyan")


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback that drives a rich progress bar (a no-op when disabled)."""
    if not enabled:
        yield lambda done, total: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            yield update
        except BaseException:
            bar.update(task, visible=False)  # a failed command ends on its error line, not a half-drawn bar
            raise


@contextmanager
def slide_progress(n_slides: int, enabled: bool = True):
    """An overall bar (slides) and one bar per running slide: yields ``(started, step, finished)`` callbacks, for
    ``ingest.tile_runner.TileEvents`` (``finished`` takes anything with a ``slide_id``). Disabled: no-op callbacks."""
    if not enabled:
        yield (lambda sid: None), (lambda sid, done, total: None), (lambda result: None)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        overall = bar.add_task("slides", total=n_slides, rate=False)
        tasks: dict[str, int] = {}

        def started(sid: str) -> None:
            if sid not in tasks:
                tasks[sid] = bar.add_task(f"  {sid[:40]}", total=None)

        def step(sid: str, done: int, total: int) -> None:
            started(sid)
            bar.update(tasks[sid], completed=done, total=total)

        def finished(result) -> None:
            bar.advance(overall)
            if result.slide_id in tasks:
                bar.remove_task(tasks.pop(result.slide_id))

        yield started, step, finished
