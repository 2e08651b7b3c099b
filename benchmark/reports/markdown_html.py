"""A small Markdown -> HTML converter for the project's own reports (``report.md``, benchmark ``results.md``).

Covers what those files use: ATX headings, paragraphs, pipe tables (with ``---:`` alignment), bullet and numbered
lists, fenced code blocks, horizontal rules, images, links, ``**bold**``, ``*emphasis*`` and ```code```. All text is
HTML-escaped. Images are resolved by a callback (the HTML report embeds them as data URIs); links are rendered as
text (an absolute URL is printed after it), so the output never points at the network.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

#: image(src, alt) -> an ``<img>``/``<figure>`` snippet, or None when the image cannot be had (the alt text shows).
ImageResolver = Callable[[str, str], "str | None"]

_TOKEN = re.compile(r"(?P<code>`[^`]+`)|(?P<img>!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\))"
                    r"|(?P<link>\[(?P<text>[^\]]+)\]\((?P<href>[^)\s]+)\))")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EM = re.compile(r"(?<![\*\w])\*(?!\s)(.+?)(?<!\s)\*(?![\*\w])")
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>])")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")


def inline(text: str, image: ImageResolver | None = None) -> str:
    """One line of Markdown inline syntax as HTML (escaped)."""
    parts: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        parts.append(_plain(text[pos:m.start()]))
        if m.group("code"):
            parts.append(f"<code>{html.escape(m.group('code')[1:-1])}</code>")
        elif m.group("img"):
            snippet = image(m.group("src"), m.group("alt")) if image else None
            parts.append(snippet if snippet is not None else f"<em>[image: {html.escape(m.group('alt'))}]</em>")
        else:
            href = m.group("href")
            label = _plain(m.group("text"))
            absolute = re.match(r"^[a-z][a-z0-9+.-]*:", href, re.I)
            parts.append(f"{label} (<code>{html.escape(href)}</code>)" if absolute else label)
        pos = m.end()
    parts.append(_plain(text[pos:]))
    return "".join(parts)


def _plain(text: str) -> str:
    out = html.escape(_ESCAPED.sub(r"\1", text), quote=False)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    return _EM.sub(r"<em>\1</em>", out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def _is_separator(line: str) -> bool:
    cells = _cells(line)
    return bool(cells) and all(re.fullmatch(r":?-{3,}:?", c) for c in cells)


def _table(lines: list[str], image: ImageResolver | None) -> str:
    header, sep, rows = _cells(lines[0]), _cells(lines[1]), [_cells(r) for r in lines[2:]]
    aligns = ["center" if s.startswith(":") and s.endswith(":") else "right" if s.endswith(":") else ""
              for s in sep]

    def row(cells: list[str], tag: str) -> str:
        tds = []
        for k, cell in enumerate(cells):
            align = aligns[k] if k < len(aligns) else ""
            style = f' class="{align}"' if align else ""
            tds.append(f"<{tag}{style}>{inline(cell, image)}</{tag}>")
        return "<tr>" + "".join(tds) + "</tr>"

    body = "".join(row(r, "td") for r in rows)
    return f"<table>\n<thead>{row(header, 'th')}</thead>\n<tbody>{body}</tbody>\n</table>"


def markdown_to_html(text: str, image: ImageResolver | None = None, heading_offset: int = 0) -> str:
    """``text`` (Markdown) as an HTML fragment; headings are shifted down by ``heading_offset`` levels (at most
    ``h6``) so a document can sit inside a section."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(inline(p.strip(), image) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            i += 1
        elif line.lstrip().startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
        elif m := _HEADING.match(line):
            flush()
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{inline(m.group(2), image)}</h{level}>")
            i += 1
        elif "|" in line and i + 1 < len(lines) and _is_separator(lines[i + 1]):
            flush()
            j = i + 2
            while j < len(lines) and lines[j].strip() and "|" in lines[j]:
                j += 1
            out.append(_table(lines[i:j], image))
            i = j
        elif _RULE.match(line):
            flush()
            out.append("<hr>")
            i += 1
        elif _LIST.match(line):
            flush()
            ordered = bool(re.match(r"^\s*\d", line))
            items = []
            while i < len(lines) and (m := _LIST.match(lines[i])):
                items.append(f"<li>{inline(m.group(1), image)}</li>")
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(items) + f"</{tag}>")
        else:
            para.append(line)
            i += 1
    flush()
    return "\n".join(out)
