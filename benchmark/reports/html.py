"""One self-contained ``report.html`` for a run directory: every figure embedded, inline CSS, no scripts, no URLs.

:func:`write_html` looks under the directory (skipping zarr stores and hidden folders) for the files the other
commands write, by name, and builds the sections in this order:

1. data: which stores the runs used and what they hold (a loud banner when any is SYNTHETIC);
2. training curves: every ``metrics.jsonl`` (one JSON row per epoch: train, suite, MIL, slide fusion), plotted;
3. suites: every suite's ``report.md`` (tables: cross-magnification and the ``histo-bench suite NAME`` studies)
   and its figures (``results.json`` beside it);
4. benchmark: every ``results.md`` and any Markdown under a ``bench*`` folder, with the PNGs beside it;
5. explanations: every ``explain.json`` (``histo-bench explain``) with its figures and captions;
6. predictions: every slide ``predictions.csv`` (``histo-bench predict`` on MIL / slide fusion) and the attention
   heatmaps beside it.

A directory holding none of these raises :class:`ReportError`, and so does a suite folder written before
``benchmark.suites`` (a ``results.json`` without ``format`` and no ``report.md``): its renderer is gone.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.environment import git_sha
from benchmark.reports.curves import SUMMARY_HEADER, curves_png, read_jsonl, summary_rows
from benchmark.reports.markdown_html import markdown_to_html
from histo_bench.errors import HistoBenchError
from histo_bench.files import atomic_write_text
from histo_bench.provenance import SYNTHETIC_NOTE, data_sentence, is_synthetic

log = logging.getLogger(__name__)

_SKIP_SUFFIXES = (".zarr", ".partial")
_SKIP_NAMES = {"__pycache__", "node_modules", "attention_npy"}
_MAX_IMAGE_BYTES = 16 * 2**20
_MAX_MIL_ROWS = 60
_MAX_MIL_HEATMAPS = 48
_THUMBNAIL_SIDE = 560  # slide heatmaps are shown 280 px wide: embed them at twice that
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class ReportError(HistoBenchError, ValueError):
    """Nothing to report in the directory, or it does not exist."""


class LegacySuiteError(ReportError):
    """A suite folder in the layout written before ``benchmark.suites``, which this version no longer renders."""

    def __init__(self, suite_dir: str | Path) -> None:
        super().__init__(f"{suite_dir}: results.json is from a suite run before 'histo-bench suite NAME' (it has no "
                         "'format'); this version no longer renders that layout: rerun the study with "
                         "'histo-bench suite magnification-transfer'")


@dataclass
class Found:
    """The report inputs under a run directory, by kind (sorted paths)."""

    metrics: list[Path] = field(default_factory=list)
    suites: list[Path] = field(default_factory=list)
    bench: list[Path] = field(default_factory=list)
    explains: list[Path] = field(default_factory=list)
    predictions: list[Path] = field(default_factory=list)
    splits: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.metrics or self.suites or self.bench or self.explains or self.predictions)


def discover(run_dir: Path) -> Found:
    """Walk ``run_dir`` (not into zarr stores, hidden or cache folders) and sort what it finds into :class:`Found`."""
    found = Found()
    for root, dirs, files in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_NAMES
                         and not d.endswith(_SKIP_SUFFIXES))
        here = Path(root)
        names = set(files)
        rel_parts = here.relative_to(run_dir).parts
        if "metrics.jsonl" in names:
            found.metrics.append(here / "metrics.jsonl")
        if "results.json" in names and ("report.md" in names or _is_suite(here / "results.json")):
            found.suites.append(here)
        if "explain.json" in names:
            found.explains.append(here / "explain.json")
        if "predictions.csv" in names:
            found.predictions.append(here / "predictions.csv")
        if "splits.json" in names:
            found.splits.append(here / "splits.json")
        in_bench = any(p.startswith("bench") for p in (*rel_parts, run_dir.resolve().name))
        for name in sorted(names):
            if name == "results.md" or (in_bench and name.endswith(".md") and name != "report.md"):
                found.bench.append(here / name)
    return found


def _is_suite(path: Path) -> bool:
    try:
        return "cells" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _uri(path: Path, max_side: int | None = None) -> str | None:
    """``path`` as a data URI; with ``max_side``, a larger image is first shrunk to it (PNG)."""
    kind = _IMAGE_TYPES.get(path.suffix.lower())
    if kind is None or not path.is_file() or path.stat().st_size > _MAX_IMAGE_BYTES:
        return None
    data = path.read_bytes()
    if max_side:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) > max_side:
                im.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                im.save(buf, format="PNG", optimize=True)
                data, kind = buf.getvalue(), "image/png"
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


class _Page:
    """Collects sections and remembers which image files are already embedded (each appears once)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.sections: list[tuple[str, str, str]] = []
        self.embedded: set[Path] = set()

    def rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.run_dir.resolve())) or "."
        except ValueError:
            return str(path)

    def figure(self, path: Path, caption: str = "", alt: str = "", max_side: int | None = None) -> str:
        path = path.resolve()
        if path in self.embedded:
            return ""
        uri = _uri(path, max_side)
        if uri is None:
            return f"<p class='missing'>figure {html.escape(self.rel(path))} not found or too large</p>"
        self.embedded.add(path)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f"<figure><img src=\"{uri}\" alt=\"{html.escape(alt or path.stem)}\">{cap}</figure>"

    def markdown(self, text: str, base: Path, heading_offset: int = 2) -> str:
        def image(src: str, alt: str) -> str | None:
            if "://" in src or src.startswith("data:"):
                return None
            return self.figure(base / src, alt, alt) or ""

        return markdown_to_html(text, image, heading_offset)

    def add(self, anchor: str, title: str, body: str) -> None:
        if body.strip():
            self.sections.append((anchor, title, body))


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    right = " class='right'"
    body = "".join("<tr>" + "".join(
        f"<td{right if k >= numeric_from else ''}>{html.escape(str(v))}</td>" for k, v in enumerate(r))
        + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- data ----------------------------------------------------------------------------------------------------------

def _data_rows(found: Found, page: _Page) -> tuple[list[list[Any]], bool]:
    rows: dict[str, tuple[str, str, list[str]]] = {}
    synthetic = False
    for path in found.splits:
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "store" not in s:
            continue
        origin = s.get("origin", {})
        synthetic |= is_synthetic(origin)
        counts = "; ".join(f"{k}: {len(s[k]['patients'])} patients / {len(s[k]['indices'])} images"
                           for k in ("train", "val", "test") if isinstance(s.get(k), dict))
        _seen(rows, s["store"], data_sentence(origin), counts, page.rel(path.parent))
    for path in found.suites:
        r = json.loads((path / "results.json").read_text())
        synthetic |= is_synthetic(r.get("origin"))
        _seen(rows, r.get("store", "?"), data_sentence(r.get("origin")), "", page.rel(path))
    for path in found.explains:
        e = json.loads(path.read_text())
        d = e.get("data", {})
        synthetic |= bool(d.get("synthetic"))
        _seen(rows, d.get("store", "?"), d.get("line", ""), "", page.rel(path.parent))
    return [[store, origin, counts, ", ".join(places)] for store, (origin, counts, places) in rows.items()], synthetic


def _seen(rows: dict[str, tuple[str, str, list[str]]], store: str, origin: str, counts: str, place: str) -> None:
    """Record that ``place`` used ``store``; the first description of a store wins, every place is listed."""
    first = rows.setdefault(store, (origin, counts, []))
    if counts and not first[1]:
        rows[store] = first = (first[0], counts, first[2])
    first[2].append(place)


# -- training curves -----------------------------------------------------------------------------------------------

def _curves(found: Found, page: _Page) -> str:

    runs = [(page.rel(p.parent) if p.parent != page.run_dir else page.run_dir.name, read_jsonl(p))
            for p in found.metrics]
    runs = [(name, rows) for name, rows in runs if rows]
    if not runs:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(curves_png(runs)).decode("ascii")
    img = ("<figure><img src=\"" + uri + "\" alt=\"training curves\"><figcaption>One line per run "
           "(metrics.jsonl): training loss and the validation metrics used for early stopping.</figcaption></figure>")
    return img + _table(SUMMARY_HEADER, summary_rows(runs))


# -- cross-magnification, benchmark ---------------------------------------------------------------------------------

def _suites(found: Found, page: _Page) -> str:
    parts = []
    for suite in found.suites:
        md = suite / "report.md"
        if not md.exists():
            if "format" not in json.loads((suite / "results.json").read_text()):
                raise LegacySuiteError(suite)
            raise ReportError(f"{suite}: results.json without its report.md; 'histo-bench report {suite}' rebuilds "
                              "it")
        body = page.markdown(md.read_text(), suite)
        extra = "".join(page.figure(p, p.stem.replace("_", " ")) for p in sorted(suite.glob("*.png")))
        parts.append(f"<div class='run'><p class='path'>{html.escape(page.rel(suite))}</p>{body}{extra}</div>")
    return "".join(parts)


def _bench(found: Found, page: _Page) -> str:
    parts = []
    for md in found.bench:
        body = page.markdown(md.read_text(), md.parent)
        pngs = "".join(page.figure(p, p.stem.replace("_", " ")) for p in sorted(md.parent.glob("*.png")))
        parts.append(f"<div class='run'><p class='path'>{html.escape(page.rel(md))}</p>{body}{pngs}</div>")
    return "".join(parts)


# -- explanations, MIL -----------------------------------------------------------------------------------------------

def _explanations(found: Found, page: _Page, mil_files: set[Path]) -> str:
    parts = []
    for path in found.explains:
        e = json.loads(path.read_text())
        d = e.get("data", {})
        head = (f"<h3>{html.escape(str(e.get('model', '?')))}"
                + (f" trained on {html.escape(str(e['train_magnification']))}" if e.get("train_magnification")
                   else "") + "</h3>"
                f"<p class='path'>{html.escape(page.rel(path.parent))} (checkpoint "
                f"{html.escape(str(e.get('checkpoint', '?')))})</p>"
                f"<p><strong>Method:</strong> {html.escape(str(e.get('method', '?')))}</p>"
                f"<p class='{'synthetic' if d.get('synthetic') else 'dataline'}'>{html.escape(str(d.get('line', '')))}"
                "</p>")
        acc = e.get("accuracy") or {}
        table = _table(["magnification", "accuracy", "images", "patients"],
                       [[m, f"{a['accuracy']:.3f}", a["n_images"], a.get("n_patients", "")] for m, a in acc.items()]
                       ) if acc else ""
        figs, pairs, skipped = [], [], 0  # the per-class outcome grids go two to a row
        for f in e.get("figures", []):
            file = (path.parent / f["file"]).resolve()
            if file in mil_files:
                skipped += 1
                continue
            (pairs if f.get("kind") == "outcomes" else figs).append(
                page.figure(file, f.get("caption", ""), f.get("kind", "")))
        note = (f"<p>{skipped} attention heatmap(s): see <a href='#mil'>MIL</a>.</p>" if skipped else "")
        outcomes = f"<div class='pairs'>{''.join(pairs)}</div>" if pairs else ""
        parts.append(f"<div class='run'>{head}{table}{''.join(figs)}{outcomes}{note}</div>")
    return "".join(parts)


def _mil_files(found: Found) -> set[Path]:
    return {p.resolve() for pred in found.predictions for p in (pred.parent / "attention").glob("*.png")}


def _mil(found: Found, page: _Page) -> str:
    parts = []
    for pred in found.predictions:
        with pred.open(newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        if "slide_id" not in header or "predicted" not in header:
            continue  # per-image predictions: the training curves and suites already report those runs
        table = _table(header, body[:_MAX_MIL_ROWS], numeric_from=header.index("predicted") + 1)
        more = f"<p>{len(body) - _MAX_MIL_ROWS} more rows in the CSV.</p>" if len(body) > _MAX_MIL_ROWS else ""
        column = header.index("predicted")
        predicted = {r[0]: r[column] for r in body if len(r) > column}
        heatmaps = sorted((pred.parent / "attention").glob("*.png"))
        figs = "".join(page.figure(p, f"{p.stem}: predicted {predicted.get(p.stem, '?')}; red = most attended",
                                   max_side=_THUMBNAIL_SIDE) for p in heatmaps[:_MAX_MIL_HEATMAPS])
        parts.append(f"<div class='run'><p class='path'>{html.escape(page.rel(pred))}</p>{table}{more}"
                     f"<div class='grid'>{figs}</div></div>")
    return "".join(parts)


# -- page ----------------------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.5 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1240px;margin:0 auto;padding:24px 32px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:0 0 4px}h2{border-bottom:2px solid #d0d7de;padding-bottom:4px;margin-top:40px}
h3{margin-top:28px}.meta{color:#57606a;margin:0 0 12px}.path{color:#57606a;font:12px monospace;margin:2px 0}
.banner{background:#cf222e;color:#fff;font-weight:700;font-size:17px;padding:10px 16px;border-radius:6px;margin:12px 0}
.banner.real{background:#1a7f37}.synthetic{color:#cf222e;font-weight:600}.dataline{color:#1f2328}
nav{margin:8px 0 16px}nav a{margin-right:14px;color:#0969da;text-decoration:none}
table{border-collapse:collapse;margin:10px 0 16px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:left}th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}td.right,th.right{text-align:right}td.center,th.center{text-align:center}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:12.5px;margin-top:4px;max-width:1000px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{width:280px;margin:4px}
.pairs{display:flex;flex-wrap:wrap;gap:12px}.pairs figure{width:calc(50% - 6px);margin:6px 0}
.run{margin-bottom:26px}code{background:#f6f8fa;padding:1px 4px;border-radius:4px;font-size:12.5px}
pre{background:#f6f8fa;padding:10px;overflow-x:auto}.missing{color:#9a6700}
"""

_SECTIONS = (("data", "Data"), ("training", "Training curves"), ("cross-magnification", "Suites"),
             ("benchmark", "Benchmark"), ("explanations", "Explanations"), ("mil", "MIL (slide level)"))


def build_html(run_dir: str | Path) -> str:
    """The report page for ``run_dir`` as a string (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such directory")
    found = discover(run_dir)
    if found.empty():
        raise ReportError(f"{run_dir}: nothing to report (no metrics.jsonl, results.json + report.md, results.md, "
                          "explain.json or predictions.csv under it); run train / suite / explain / predict / "
                          "a benchmark into it first")
    page = _Page(run_dir)
    rows, synthetic = _data_rows(found, page)
    banner = (f"<div class='banner'>SYNTHETIC DATA: these runs used {html.escape(SYNTHETIC_NOTE)}.</div>"
              if synthetic else
              "<div class='banner real'>Data: user-provided stores (see Data).</div>" if rows else "")
    page.add("data", "Data", _table(["store", "origin", "splits (patients / images)", "recorded in"], rows,
                                    numeric_from=99) if rows else "<p>No store recorded in these runs.</p>")
    page.add("training", "Training curves", _curves(found, page))
    page.add("cross-magnification", "Suites", _suites(found, page))  # cross-magnification and the seed studies
    page.add("benchmark", "Benchmark", _bench(found, page))
    mil_files = _mil_files(found)
    page.add("explanations", "Explanations", _explanations(found, page, mil_files))
    page.add("mil", "MIL (slide level)", _mil(found, page))
    order = {a: k for k, (a, _) in enumerate(_SECTIONS)}
    sections = sorted(page.sections, key=lambda s: order[s[0]])
    sha = git_sha()
    meta = (f"generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from <code>{html.escape(str(run_dir))}</code>"
            + (f", histo-bench commit <code>{html.escape(sha)}</code>" if sha else ""))
    nav = "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t, _ in sections)
    body = "".join(f"<section id='{a}'><h2>{html.escape(t)}</h2>{b}</section>" for a, t, b in sections)
    title = f"histo-bench report: {run_dir.resolve().name}"
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><main><h1>{html.escape(title)}</h1><p class='meta'>{meta}</p>"
            f"{banner}<nav>{nav}</nav>{body}</main></body></html>\n")


def write_html(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (default ``<run_dir>/report.html``, written atomically) and return its path."""
    text = build_html(run_dir)
    path = Path(out) if out else Path(run_dir) / "report.html"
    atomic_write_text(path, text)
    log.info("wrote %s (%.1f MiB)", path, path.stat().st_size / 2**20)
    return path
