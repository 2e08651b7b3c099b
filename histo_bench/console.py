"""Terminal helpers shared by the CLIs: logging through rich, and a rich progress bar as a progress callback.

Library code never prints; it logs and calls a ``progress(done, total)`` callback. Only CLIs use this module.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from rich.cells import cell_len
from rich.console import Console, ConsoleDimensions
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
from rich.table import Column, Table
from rich.text import Text

#: stdout's width when it is not a terminal (piped, redirected, captured): wide enough that no table ever shrinks to
#: fit, so every identifier stays whole and every row stays on one line ``grep`` can find.
PIPE_WIDTH = 4096


class _Stdout(Console):
    """A console whose width is the terminal's on a terminal and :data:`PIPE_WIDTH` anywhere else (rich would use
    80 columns, or the width of whichever of stdin/stderr is a terminal, and shorten tables to fit)."""

    def _size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self._width is not None or self.is_terminal else ConsoleDimensions(PIPE_WIDTH, size.height)

    size = property(_size, Console.size.fset)


console = Console(stderr=True)
#: Results (tables, summaries) go to stdout so they can be piped; logs and bars go to stderr.
stdout = _Stdout()


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
#: The project's own packages: ``-v`` shows their DEBUG lines; other libraries' DEBUG lines (zarr, numcodecs,
#: asyncio...: dozens per command) need ``-vv``.
PROJECT_PACKAGES = ("histo_bench", "ingest", "models", "pipelines", "benchmark")


class _OwnDebugOnly(logging.Filter):
    """Passes DEBUG records of the project's packages only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG or record.name.split(".", 1)[0] in PROJECT_PACKAGES


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Route ``logging`` to rich on stderr: WARNING when quiet; INFO by default (warnings, one line per epoch and
    per finished step, with progress bars); DEBUG with -v (the project's: which loader, what was cached...), and
    every library's DEBUG too with -vv.

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
    if verbose < 2:
        handler.addFilter(_OwnDebugOnly())
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


def identifier(header: str, **kwargs) -> Column:
    """A table column of identifiers (model names, slide ids, paths, store names): never wrapped nor cut short.
    Only where a terminal is too narrow for even the identifiers does a value fold onto a second line, whole."""
    return Column(header, no_wrap=True, overflow="fold", **kwargs)


def rich_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, ids: int = 1,
               justify: Sequence[str] | None = None, title: str | None = None) -> Table:
    """A rich table of ``rows`` under ``headers``: the first ``ids`` columns are :func:`identifier` columns, the
    others wrap at spaces and fold a word too long for them rather than end it with "...". ``justify``: left,
    right or center per column (default left). The table is at least as wide as its title, so a path there stays
    on one line too."""
    justify = (list(justify or ()) + ["left"] * len(headers))[:len(headers)]
    columns = [identifier(h, justify=j) if k < ids else Column(h, justify=j, overflow="fold")
               for k, (h, j) in enumerate(zip(headers, justify, strict=True))]
    width = max((cell_len(line) for line in (title or "").splitlines()), default=0)
    table = Table(*columns, title=Text(title, style="table.title") if title else None, title_justify="left",
                  min_width=width or None)  # Text: a path's [...] is not markup
    for row in rows:
        cells = [c if isinstance(c, Text) else str(c) for c in row][:len(headers)]  # str: rich markup
        table.add_row(*cells, *[""] * (len(headers) - len(cells)))
    return table


_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_SEPARATOR = re.compile(r":?-{3,}:?")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")


def _cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(line)]


def _is_separator(line: str) -> bool:
    return "|" in line and all(_SEPARATOR.fullmatch(c) for c in _cells(line))


def _inline(text: str) -> Text:
    """Markdown inline marks as rich styles: ``**bold**`` in bold, ```code``` without its backticks."""
    out, end = Text(), 0
    for m in _INLINE.finditer(text):
        out.append(text[end:m.start()])
        bold = m.group(1) is not None
        out.append(m.group(1) if bold else m.group(2), style="bold" if bold else "")
        end = m.end()
    out.append(text[end:])
    return out


def markdown_to_table(lines: Sequence[str]) -> Table:
    """A rich table (:func:`rich_table`) from a Markdown pipe table: header row, ``| --- | ---: |`` separator (its
    alignment is kept), rows. Its leading left-aligned columns (names, backends...) are identifier columns."""
    headers, separator = _cells(lines[0]), _cells(lines[1])
    justify = ["center" if s.startswith(":") and s.endswith(":") else "right" if s.endswith(":") else "left"
               for s in separator] + ["left"] * len(headers)
    ids = next((k for k, j in enumerate(justify[:len(headers)]) if j != "left"), len(headers))
    return rich_table([h.replace("**", "").replace("`", "") for h in headers],
                      ([Text(c.replace("**", "").replace("`", "")) for c in _cells(row)] for row in lines[2:]),
                      ids=ids, justify=justify[:len(headers)])


def print_markdown(text: str, out: Console | None = None) -> None:
    """Print one of the project's Markdown reports (``results.md``, ``report.md``) to ``out`` (default stdout):
    every pipe table as a rich table (:func:`markdown_to_table`), headings in bold, other lines as they are. The file
    stays Markdown; this is only how it reads in a terminal."""
    out = out or stdout
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "|" in line and i + 1 < len(lines) and _is_separator(lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].strip() and "|" in lines[j]:
                j += 1
            out.print(markdown_to_table(lines[i:j]))
            i = j
            continue
        heading = _HEADING.match(line)
        if heading:
            out.print(_inline(heading.group(2)), style="bold underline" if len(heading.group(1)) == 1 else "bold")
        else:
            out.print(_inline(line), highlight=False)
        i += 1
