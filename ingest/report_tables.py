"""Rich tables that summarise an image store (used by ``histo-ingest info`` and after an ingest)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ingest.store import ImageStore


def origin_line(store: ImageStore) -> str:
    """One line saying which data the store holds: synthetic demo data or the user's own."""
    origin = store.attrs.get("origin", {})
    if origin.get("kind") == "synthetic":
        return "data: SYNTHETIC (histo-bench generator; not real tissue, numbers on it say nothing clinical)"
    return f"data: user-provided, ingested from {origin.get('root', '?')}"


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
        table.add_column("class", footer="total")
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
