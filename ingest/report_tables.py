"""Rich tables that summarise an image store (used by ``histo-ingest info`` and after an ingest)."""

from __future__ import annotations

from collections import Counter

from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from histo_bench.provenance import data_sentence
from ingest.splits import SPLIT_CODES
from ingest.store import ImageStore


def origin_line(store: ImageStore) -> str:
    """One line saying which data the store holds: synthetic demo data or the user's own
    (:func:`histo_bench.provenance.data_sentence` without the store and its counts, which callers add)."""
    return data_sentence(store.attrs.get("origin"))


def store_tables(store: ImageStore) -> list:
    """A header, one table per split (class x magnification, images), and patients per split."""
    counts = store.counts()
    mags = list(store.attrs["magnifications"])
    h, w = store.image_shape[:2]
    header = Text.assemble(
        (f"{store.path}\n", "bold"),
        f"{counts['images']} images, {counts['patients']} patients, {w}x{h} px\n",
        f"split: {store.attrs['split']['description']}\n",
        origin_line(store),
    )
    parts: list = [header]
    for split_name, table_counts in counts["table"].items():
        n_pat = counts["patients_per_split"].get(split_name, 0)
        table = Table(title=f"{split_name}: {n_pat} patients", title_justify="left", show_footer=True)
        table.add_column("class", footer="total", no_wrap=True, overflow="fold")  # identifiers: never cut
        totals = {m: sum(row[m] for row in table_counts.values()) for m in mags}
        for m in mags:
            table.add_column(m, justify="right", footer=str(totals[m]))
        table.add_column("all", justify="right", footer=str(sum(totals.values())), style="bold")
        for cls, row in table_counts.items():
            table.add_row(cls, *(str(row[m]) for m in mags), str(sum(row.values())))
        parts.append(table)
    notes = store.attrs["split"].get("notes", [])
    if notes:
        parts.append(Text("split notes:\n" + "\n".join(f"  {n}" for n in notes), style="yellow"))
    summary = store.attrs.get("summary", {})
    if summary.get("skipped"):
        parts.append(Text(f"{len(summary['skipped'])} input file(s) were skipped at ingest "
                          "(listed in the store attrs 'summary.skipped')", style="yellow"))
    return [Group(*parts)]


def patient_table(store: ImageStore) -> Table:
    """Images per patient x magnification, with the patient's class(es) and split."""

    mags = list(store.attrs["magnifications"])
    split_names = {code: name for name, code in SPLIT_CODES.items()}
    table = Table(title=f"{len(set(store.patient.tolist()))} patients", title_justify="left")
    for col in ("patient", "class", "split", *mags, "all"):
        table.add_column(col, justify="right" if col in mags or col == "all" else "left", no_wrap=col == "patient",
                         overflow="fold")
    for patient in sorted(set(store.patient.tolist())):
        rows = store.patient == patient
        per_mag = Counter(store.magnification[rows].tolist())
        classes = ", ".join(sorted({store.classes[i] for i in store.label[rows]}))
        split = ", ".join(sorted({split_names[int(c)] for c in store.split[rows]}))
        table.add_row(patient, classes, split, *(str(per_mag.get(m, 0)) for m in mags), str(int(rows.sum())))
    return table


def tiling_tables(summary, overlay_dir) -> list:
    """Per-slide outcome, tiles per scale and per-stage time after ``histo-ingest tile``."""
    scales = sorted({k for r in summary.results for k in r.tiles})
    title = f"{summary.store}: {len(summary.results)} slide(s)"
    table = Table(title=title, title_justify="left", min_width=cell_len(title))  # the store path on one line
    for col in ("slide", "status", "reader", "mpp", "mag", *scales, "seconds"):
        table.add_column(col, justify="left" if col in ("slide", "status", "reader") else "right",
                         no_wrap=col == "slide", overflow="fold")
    for r in summary.results:
        status = {"failed": "[red]failed[/]", "empty": "[yellow]no tissue[/]"}.get(r.status, r.status)
        table.add_row(r.slide_id, status, r.reader or "-", f"{r.mpp:.3g}" if r.mpp else "-",
                      f"{r.objective_power:g}" if r.objective_power else "-",
                      *(str(r.tiles.get(s, "-")) for s in scales), f"{sum(r.timings.values()):.1f}")
    stages = summary.stage_seconds()
    lines = [f"{summary.tiles} tiles in {summary.seconds:.1f} s ({summary.tiles_per_s:.0f} tiles/s); "
             f"done {summary.count('done')}, no tissue {summary.count('empty')}, "
             f"already complete {summary.count('skipped')}, failed {summary.count('failed')}",
             "time per stage (s, summed over slides): "
             + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()),
             f"overlays (tissue mask + kept tiles): {overlay_dir}"]
    parts: list = [table, Text("\n".join(lines))]
    failures = [r for r in summary.results if r.status == "failed"]
    if failures:
        parts.append(Text("failed:\n" + "\n".join(f"  {r.line()}" for r in failures), style="red"))
    return parts


def slide_store_tables(store) -> list:
    """Slides, tiles per scale, reader, mpp and time taken for ``histo-ingest info`` on a slide store."""
    ids = store.slide_ids()
    infos = [store.slide(s) for s in ids]
    scales = sorted({k for i in infos for k in i.tiles})
    title = f"{store.path}: {len(ids)} slide(s)"
    table = Table(title=title, title_justify="left", min_width=cell_len(title))  # the store path on one line
    for col in ("slide", "reader", "mpp", "mag", "size", *scales, "tissue %", "seconds"):
        table.add_column(col, justify="left" if col in ("slide", "reader") else "right", no_wrap=col == "slide",
                         overflow="fold")
    for info in infos:
        a = info.attrs
        table.add_row(info.slide_id, a.get("reader", "-"), f"{a['mpp']:.3g}" if a.get("mpp") else "-",
                      f"{a['objective_power']:g}" if a.get("objective_power") else "-",
                      f"{a['width']}x{a['height']}", *(str(info.tiles.get(s, "-")) for s in scales),
                      f"{100 * a.get('tissue_fraction', 0):.1f}", f"{sum(a.get('timings', {}).values()):.1f}")
    parts: list = [table]
    partial = store.partial_ids()
    if partial:
        parts.append(Text(f"{len(partial)} interrupted slide(s), redone on the next run: {', '.join(partial)}",
                          style="yellow"))
    return parts
