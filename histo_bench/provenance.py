"""The one sentence that says which data a result ran on: :func:`data_sentence`.

It reads a store's ``origin`` attribute (``{"kind": "synthetic", ...}`` for histo-bench's generated demo data, else
the user's own with the ``root`` it was ingested from; slide suites add ``tissue``, ``synthetic_slides`` and
``unknown_slides``) and the counts behind the result::

    data: SYNTHETIC (histo-bench's generated H&E-like images, not real tissue: the numbers show that the pipeline
    works and say nothing clinical); store data/demo.zarr, 1280 images of 40 patients
    data: user-provided, ingested from /data/BreaKHis_v1; store data/breakhis.zarr, 7909 images of 82 patients

``markdown=True`` gives the same sentence for a report header: ``**Data: SYNTHETIC** (...)`` with paths in
backticks and a closing full stop. Every report, CLI summary and results row uses this one wording.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: What synthetic data is, and what numbers on it are worth (also the HTML report's banner).
SYNTHETIC_NOTE = ("histo-bench's generated H&E-like images, not real tissue: the numbers show that the pipeline "
                  "works and say nothing clinical")


def is_synthetic(origin: Mapping[str, Any] | None) -> bool:
    """True for the ``origin`` of histo-bench's generated data."""
    return bool(origin) and origin.get("kind") == "synthetic"


def _size(images: int | None, patients: int | None, slides: int | None) -> str:
    items = ", ".join(f"{n} {what}" for n, what in ((slides, "slides"), (images, "images")) if n is not None)
    if patients is None:
        return items
    return f"{items} of {patients} patients" if items else f"{patients} patients"


def data_sentence(origin: Mapping[str, Any] | None, *, store: str | None = None, images: int | None = None,
                  patients: int | None = None, slides: int | None = None, markdown: bool = False) -> str:
    """Which data a result ran on (see the module docstring): the origin, then the store and its counts.

    ``origin``: the store's ``origin`` attribute (None or empty: not recorded); ``store``: its path; ``images`` /
    ``patients`` / ``slides``: how many back the result (each left out when None).
    """
    origin = origin or {}

    def code(text: Any) -> str:
        return f"`{text}`" if markdown else str(text)

    if is_synthetic(origin):
        head = ("**Data: SYNTHETIC**" if markdown else "data: SYNTHETIC") + f" ({SYNTHETIC_NOTE})"
    else:
        label = "**Data:**" if markdown else "data:"
        root = origin.get("root")
        what = ("user-provided" + (f", ingested from {code(root)}" if root and str(root) != str(store) else "")
                if origin else "origin not recorded")
        head = f"{label} {what}"
    parts = [head]
    size = _size(images, patients, slides)
    if store is not None or size:
        parts.append(", ".join(p for p in ((f"store {code(store)}" if store is not None else ""), size) if p))
    if origin.get("tissue"):
        parts.append(f"tissue: {origin['tissue']}")
    if origin.get("synthetic_slides"):
        parts.append(f"SYNTHETIC slides among them: {', '.join(map(str, origin['synthetic_slides']))}")
    if origin.get("unknown_slides"):
        parts.append(f"source not checkable (moved or not TIFF): {len(origin['unknown_slides'])} slide(s)")
    return "; ".join(parts) + ("." if markdown else "")
