"""Where an image store lives, who is writing it and whether it is finished: plain files, read without zarr.

:mod:`ingest.store` and :mod:`ingest.store_writer` import these from here; a check that a store is complete (the
ingest's first step, the loaders') reads one JSON file instead of importing zarr (~0.4 s).
"""

from __future__ import annotations

from pathlib import Path

from ingest.locks import WorkLock
from ingest.output_guard import refusal, store_attributes, store_format

FORMAT = "histo-bench/image-store"
FORMAT_VERSION = 1


def partial_path(out: Path) -> Path:
    """Where a store is built before the atomic rename."""
    return out.with_name(out.name + ".partial")


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a finished store (its root group's ``complete`` attribute is set); unreadable
    metadata counts as incomplete."""
    return bool(store_attributes(path).get("complete", False))


def partial_refusal(partial: Path) -> str | None:
    """None when the ``<out>.partial`` at ``partial`` may be resumed or discarded (absent, empty, or a zarr group
    this code wrote, even one cut short while its metadata was written); else why not (a user's folder or file)."""
    if not partial.exists() or store_format(partial) == FORMAT or (partial / "zarr.json").is_file():
        return None
    return refusal(partial, FORMAT, "image store (interrupted ingest)")


def store_lock(out: str | Path) -> WorkLock:
    """The lock a process holds while it builds the image store ``out`` (``<out>.lock``, beside it)."""
    out = Path(out)
    return WorkLock(out.with_name(out.name + ".lock"), f"ingesting {out.name}")
