"""The zarr v3 image-dataset store: its layout and the read API (:class:`ImageStore`).

Layout of one store (a directory)::

    images          (N, H, W, 3) uint8   one image per inner chunk, ``shard_size`` images per shard file,
                                          Blosc-zstd + bitshuffle
    label           (N,) int16           index into attrs["classes"]
    malignant       (N,) bool
    patient         (N,) str
    magnification   (N,) str            "40X" | "100X" | "200X" | "400X"
    source          (N,) str            path of the original file, relative to the ingested root
    orig_size       (N, 2) int32        (height, width) before fitting to the store size
    split           (N,) int8           0 train, 1 val, 2 test, -1 unused (see ingest.splits)
    attrs: format, format_version, classes, magnifications, height, width, config, split, generator/source,
           summary (counts, skipped files), complete

A store is written (atomically, resumably) by :mod:`ingest.store_writer` under ``<out>.partial`` and renamed to
``<out>`` only after ``complete`` is set, so a store at ``<out>`` is always whole; :class:`ImageStore` opens only such
a store.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from histo_bench.errors import ConfigError, HistoBenchError
from ingest.breakhis_names import resolve_magnifications
from ingest.shards import ShardedImageReader, ShardLayout
from ingest.splits import SPLIT_CODES, as_str_array, assert_patient_disjoint
from ingest.store_paths import FORMAT, FORMAT_VERSION, is_complete, partial_path  # noqa: F401 (the store's API)

#: Threads used to fetch and decode images concurrently in :meth:`ImageStore.read`.
READ_THREADS = min(8, (os.cpu_count() or 1) * 2)


class StoreError(HistoBenchError, RuntimeError):
    """A store that is missing, incomplete, of another format, or cannot be written."""


#: Appended to the message of a damaged image store's :class:`~ingest.shards.ShardError`.
DAMAGED_HINT = ": rebuild it (histo-ingest breakhis ... --overwrite)"


class ImageStore:
    """Read access to a finished image store: metadata in memory, pixels on demand.

    Example::

        store = ImageStore("data/breakhis.zarr")
        idx = store.select(split="train", magnification="mixed")
        batch = store.read(idx[:32])          # (32, H, W, 3) uint8
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            what = "no such store" if not self.path.exists() else "not a zarr store"
            hint = (f" ({partial_path(self.path).name} is an interrupted ingest: re-run it to resume)"
                    if partial_path(self.path).exists() else "")
            raise StoreError(f"{self.path}: {what}{hint}")
        group = zarr.open_group(str(self.path), mode="r")
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path}: not a histo-bench image store (format {attrs.get('format')!r})")
        if attrs.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format {attrs['format_version']} is newer than this "
                             f"histo-bench understands ({FORMAT_VERSION}); upgrade histo-bench")
        if not attrs.get("complete", False):
            raise StoreError(f"{self.path}: store is incomplete (interrupted ingest); re-run the ingest")
        self.group = group
        self.attrs = attrs
        self.images = group["images"]
        self.classes: tuple[str, ...] = tuple(attrs["classes"])
        self.label = group["label"][:].astype(np.int64)
        self.malignant = group["malignant"][:]
        self.patient = as_str_array(group["patient"][:])
        self.magnification = as_str_array(group["magnification"][:])
        self.split = group["split"][:]
        assert_patient_disjoint(self.patient, self.split)
        self._executor: ThreadPoolExecutor | None = None
        self._fast = ShardedImageReader.open(self.path / "images")
        if self._fast is not None:
            self._fast.hint, self._fast.noun = DAMAGED_HINT, "images"
            self._fast.layout.check(hint=DAMAGED_HINT, noun="images")  # missing shards read as zeros: 1 stat each

    def verify(self) -> int:
        """Check every shard file of ``images``: present, index whole and CRC-valid, chunks inside the file (no
        image is decoded). Raises :class:`~ingest.shards.ShardError` naming the first bad one; returns the number
        of shards checked."""
        layout = self._fast.layout if self._fast is not None else ShardLayout.open(self.path / "images")
        return layout.check(read_index=True, hint=DAMAGED_HINT, noun="images") if layout is not None else 0

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def source(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Original file paths (relative to the ingested root)."""
        src = as_str_array(self.group["source"][:])
        return src if indices is None else src[indices]

    def select(self, split: str | None = None, magnification: str | list[str] | tuple[str, ...] | None = None,
               classes: list[str] | None = None) -> np.ndarray:
        """Sorted indices of the images in ``split`` ("train"/"val"/"test"/None=all) at the given magnification(s)
        ("100X", "mixed" = 100X+400X, a list, or None = all)."""
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLIT_CODES:
                raise ConfigError(f"unknown split {split!r}: use one of {', '.join(SPLIT_CODES)}")
            mask &= self.split == SPLIT_CODES[split]
        if magnification is not None:
            mask &= np.isin(self.magnification, resolve_magnifications(magnification))
        if classes is not None:
            unknown = sorted(set(classes) - set(self.classes))
            if unknown:
                raise ConfigError(f"unknown class(es) {unknown}: the store has {', '.join(self.classes)}")
            mask &= np.isin(self.label, [self.classes.index(c) for c in classes])
        return np.flatnonzero(mask)

    def with_splits(self, codes: np.ndarray, description: str = "") -> ImageStore:
        """A view of this store whose split codes (:data:`~ingest.splits.SPLIT_CODES`, one per image) are ``codes``
        (e.g. one fold of patient-level cross-validation): ``select``, ``counts`` and every loader use them; pixels
        and metadata are shared. Raises :class:`~ingest.splits.SplitError` when a patient would cross splits."""

        codes = np.asarray(codes, dtype=np.int8)
        if codes.shape != (len(self),):
            raise ValueError(f"need one split code per image ({len(self)}), got shape {codes.shape}")
        assert_patient_disjoint(self.patient, codes)
        view = copy.copy(self)
        view.split = codes
        view.attrs = {**self.attrs, "split": {"description": description or "split override",
                                              "stored": self.attrs.get("split", {}).get("description")}}
        return view

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Images at ``indices`` (any order, repeats allowed) as (n, H, W, 3) uint8.

        Images are fetched concurrently (the Blosc decode releases the GIL) straight from the shard files
        (:mod:`ingest.shards`); zarr's own integer indexing is several times slower for random batches.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return np.empty((0, *self.image_shape), dtype=np.uint8)
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"image index out of range 0..{len(self) - 1}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(uniq), *self.image_shape), dtype=np.uint8)
        fast = self._fast

        def fetch(k: int) -> None:
            i = int(uniq[k])
            out[k] = fast.read(i) if fast is not None else self.images[i]

        if len(uniq) == 1:
            fetch(0)
        else:
            list(self._pool().map(fetch, range(len(uniq))))
        return out[inverse]

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="store-read")
        return self._executor

    def counts(self) -> dict[str, Any]:
        """Images per (class, magnification, split) and patients per split, for reports and ``info``."""
        out: dict[str, Any] = {"images": len(self), "patients": len(set(self.patient.tolist()))}
        table: dict[str, dict[str, dict[str, int]]] = {}
        for s_name, code in SPLIT_CODES.items():
            in_split = self.split == code
            if not in_split.any():
                continue
            table[s_name] = {}
            for c_i, c_name in enumerate(self.classes):
                row = {m: int(np.sum(in_split & (self.label == c_i) & (self.magnification == m)))
                       for m in self.attrs["magnifications"]}
                table[s_name][c_name] = row
        out["table"] = table
        out["patients_per_split"] = {s: len(set(self.patient[self.split == c].tolist()))
                                     for s, c in SPLIT_CODES.items() if (self.split == c).any()}
        return out
