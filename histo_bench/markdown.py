"""The one way a Markdown (GitHub pipe) table is written: :func:`markdown_table`.

    markdown_table(["model", "macro-F1"], [["resnet50", "0.812"]], align="lr")
    | model | macro-F1 |
    | --- | ---: |
    | resnet50 | 0.812 |

Cells are ``str()``-ed; a ``|`` inside a cell is escaped (``\\|``) and a line break becomes a space, so a cell can
never split the row. :mod:`benchmark.reports.markdown_html` renders the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def _rules(align: str | Sequence[str] | None, n: int) -> list[str]:
    """One separator per column from ``align``: ``None`` (all left), one letter per column (``"llr"``), or a
    sequence of ``"l"`` / ``"r"`` / ``"c"`` (or ``left`` / ``right`` / ``center``)."""
    codes = ["l"] * n if align is None else [a[:1].lower() for a in align]
    if len(codes) != n or any(c not in _RULES for c in codes):
        raise ValueError(f"align {align!r}: need one of l / r / c for each of the {n} columns")
    return [_RULES[c] for c in codes]


def markdown_table(headers: Sequence[object], rows: Iterable[Sequence[object]],
                   align: str | Sequence[str] | None = None) -> str:
    """A Markdown table: the header line, the alignment line, one line per row; no trailing newline.

    Every row must have one cell per header.
    """
    width = len(headers)
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "| " + " | ".join(_rules(align, width)) + " |"]
    for k, row in enumerate(rows):
        cells = list(row)
        if len(cells) != width:
            raise ValueError(f"row {k} has {len(cells)} cells for {width} columns")
        lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    return "\n".join(lines)
