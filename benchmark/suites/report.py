"""A suite's ``report.md`` + self-contained ``report.html``, from its ``results.json`` and the suite's sections.

The header every suite report starts with says which data the numbers come from
(:func:`histo_bench.provenance.data_sentence`: SYNTHETIC, loudly, for the generated demo data; else the user's store
and where it was ingested from) and how many patients / images (slides) it holds, the task(s), the protocol (folds
x seeds), quick mode, how to read a cell, and the command that reproduces it. The HTML page
(:mod:`benchmark.reports.html`) embeds the report, its figures, every run's training curves and any ``explain``
output under the suite directory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.suites.tables import CELL_NOTE
from histo_bench.provenance import data_sentence
from pipelines.data.tasks import TASKS, describe_task

log = logging.getLogger(__name__)

#: (figure path relative to the suite directory or absolute, caption)
Figure = tuple[str | Path, str]


def data_line(results: dict[str, Any]) -> str:
    """The data sentence of a report header, from ``results.json``'s ``origin``, ``store`` and ``store_counts``
    (image stores: ``images``, ``patients``) or ``slide_counts`` (slide stores: ``slides``, ``patients``)."""
    counts = {**(results.get("store_counts") or {}), **(results.get("slide_counts") or {})}
    return data_sentence(results.get("origin"), store=results.get("store", "?"), images=counts.get("images"),
                         patients=counts.get("patients"), slides=counts.get("slides"), markdown=True)


def header(results: dict[str, Any]) -> list[str]:
    """Markdown lines: data, tasks, protocol, quick mode, cell legend, reproduction command."""

    study = results.get("study", {})
    classes = results.get("classes", {})
    tasks = "; ".join((describe_task(t, classes[t]) if t in TASKS else f"{t} task")
                      + (f": {', '.join(classes[t])}" if classes.get(t) else "") for t in results.get("tasks", []))
    lines = [data_line(results), "", f"**Task{'s' if len(results.get('tasks', [])) > 1 else ''}:** {tasks}.", "",
             f"**Protocol:** {results.get('protocol', '?')}; folds {study.get('folds', 0)}, seeds "
             f"{study.get('seeds', 1)}. Splits are by patient (no patient in two splits, asserted in code).", ""]
    gaps = [f"{name} ({task}): fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}"
            for task, by_class in results.get("fold_gaps", {}).items() for name, folds in by_class.items()]
    if gaps:
        lines += ["**Classes missing from some test folds** (fewer patients than folds; a patient is never split): "
                  + "; ".join(gaps) + ". Their cells average over the folds that have them.", ""]
    settings = results.get("settings", {})
    if study.get("quick"):
        lines += ["**QUICK MODE** (CPU-sized: " + ", ".join(f"{k} {v}" for k, v in settings.items())
                  + "): a check that the study runs end to end, not a measurement of the models.", ""]
    elif settings:
        lines += ["**Training overrides:** " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".", ""]
    lines += [CELL_NOTE, "", f"Reproduce: `{results.get('command', '?')}`", ""]
    return lines


def write_suite_report(suite_dir: str | Path, results: dict[str, Any], title: str, sections: Sequence[str],
                       figures: Sequence[Figure] = (), html: bool = True) -> Path:
    """Write ``report.md`` (header, ``sections`` as Markdown, then ``figures`` with captions) and, with ``html``,
    ``report.html`` into ``suite_dir``; return the Markdown path."""
    suite_dir = Path(suite_dir)
    body = [f"# {title}", "", *header(results)]
    for section in sections:
        body += [section.rstrip(), ""]
    shown = [(Path(p), c) for p, c in figures if (suite_dir / p).is_file()]
    if shown:
        body += ["## Figures", ""]
        for path, caption in shown:
            rel = path.relative_to(suite_dir) if path.is_absolute() else path
            body += [f"![{path.stem}]({rel.as_posix()})", "", f"*{caption}*", ""]
    md = suite_dir / "report.md"
    md.write_text("\n".join(body).rstrip() + "\n")
    if html:
        from benchmark.reports.html import write_html

        write_html(suite_dir)
    return md
