"""Writing an image store (the layout of :mod:`ingest.store`): atomic, resumable, one writer at a time.

A store is written under ``<out>.partial``, by the one process holding ``<out>.lock``
(:func:`ingest.store_paths.store_lock`, :mod:`ingest.locks`), and renamed to ``<out>`` only after ``complete`` is
set, so a store at ``<out>`` is always whole. :class:`ImageStoreWriter` writes each image into its shard file as it
comes (:class:`ingest.shards.ShardStream`: a temporary file, renamed into place when full or at the end) and
checkpoints (the metadata of the images in finished shards, then the progress attribute) at a shard boundary at
most every :data:`CHECKPOINT_SECONDS`, and once more when the run stops, finished or interrupted
(:meth:`ImageStoreWriter.checkpoint`). Rewriting the metadata chunks after every shard cost a third of the writer's
time; now a killed run loses at most those seconds. An interrupted write resumes from its last checkpoint when the
same inputs and config are ingested again and every checkpointed array and shard is still there; any other partial
store is discarded with a one-line note.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from histo_bench.files import discard_dir, replace_dir
from ingest.disk import raise_if_environment, remove_zarr_temporaries, writing
from ingest.output_guard import refusal
from ingest.shards import ShardLayout, ShardStream, ShardWriter, image_blosc_config
from ingest.splits import SplitResult, as_str_array, assert_patient_disjoint
from ingest.store import StoreError
from ingest.store_paths import FORMAT, FORMAT_VERSION, partial_path

log = logging.getLogger(__name__)

_META_CHUNK = 8192
#: At most this many seconds between two checkpoints (always at a shard boundary).
CHECKPOINT_SECONDS = 2.0


@dataclass
class ImageMeta:
    """Per-image metadata written beside the pixels."""

    label: int
    malignant: bool
    patient: str
    magnification: str
    source: str
    orig_size: tuple[int, int]


class ImageStoreWriter:
    """Appends images shard by shard into ``<out>.partial`` and renames it into place when finished.

    ``capacity`` is the number of input images (an upper bound: skipped files leave the tail unused and the
    arrays are trimmed on :meth:`finalize`). ``resume_key`` identifies the inputs + config; a partial store with the
    same key is continued from its last checkpoint, any other partial store is discarded.
    """

    def __init__(self, out: str | Path, *, capacity: int, height: int, width: int, shard_size: int = 32,
                 clevel: int = 1, resume_key: str = "", discard: bool = False) -> None:
        self.out = Path(out)
        self.partial = partial_path(self.out)
        self.height, self.width, self.shard_size = height, width, shard_size
        self.capacity = max(capacity, 1)
        self.resumed = False
        self.progress: dict[str, Any] = {"consumed": 0, "written": 0, "skipped": [], "converted": []}
        if self.partial.exists():
            problem = "--overwrite discards it" if discard else self._resume_problem(zarr, resume_key)
            if problem is None:
                self.group = zarr.open_group(str(self.partial), mode="r+")
                self.progress = dict(self.group.attrs["progress"])
                self.resumed = True
                stray = remove_zarr_temporaries(self.partial)  # we hold the store's lock: nobody else writes it
                log.info("resuming %s: %d inputs already done%s", self.partial, self.progress["consumed"],
                         f" ({stray} half-written chunk file(s) of the killed run removed)" if stray else "")
            else:
                log.warning("discarding the partial store %s: %s", self.partial, problem)
                discard_dir(self.partial)
        if not self.resumed:
            self.group = self._create(zarr, clevel, resume_key)
        shards = ShardWriter.open(self.partial / "images")
        if shards is None:  # created above in this layout, or checked to be in it by _resume_problem
            raise StoreError(f"{self.partial / 'images'} is not in the sharded layout this writer makes")
        self._shards = shards
        self._buffer: list[ImageMeta] = []  # images in the shard being written (self._stream), not yet published
        self._stream: ShardStream | None = None
        self._unsaved: list[ImageMeta] = []  # in shard files, not yet checkpointed
        self._pending_consumed = self.progress["consumed"]
        #: The last shard boundary: (inputs consumed, skipped and converted notes, unsaved images) there.
        self._boundary = (self._pending_consumed, len(self.progress["skipped"]), len(self.progress["converted"]), 0)
        self._last_checkpoint = time.monotonic()

    def _resume_problem(self, zarr, resume_key: str) -> str | None:
        """None when the partial store can be continued: same inputs and settings, and every array and every shard
        its checkpoint counts still there; else why not."""
        try:
            group = zarr.open_group(str(self.partial), mode="r")
            attrs = dict(group.attrs)
            if not resume_key or attrs.get("resume_key") != resume_key:
                return "it was made from other inputs or settings"
            written = int(attrs["progress"]["written"])
            n, h, w = self.capacity, self.height, self.width
            shapes = {"images": (n, h, w, 3), "orig_size": (n, 2),
                      **{k: (n,) for k in ("label", "malignant", "patient", "magnification", "source")}}
            for name, shape in shapes.items():
                if name not in group:
                    return f"array {name!r} is missing"
                if tuple(group[name].shape) != shape:
                    return f"array {name!r} has shape {tuple(group[name].shape)}, expected {shape}"
            layout = ShardLayout.open(self.partial / "images")
            if layout is None:
                return "its images array is not in the expected sharded layout"
            for shard in range(written // layout.shard_size):
                if not layout.shard_file(shard).exists():
                    return f"shard file {layout.shard_file(shard).name} of checkpointed images is missing"
        except Exception as exc:  # unreadable metadata: rebuild
            return f"unreadable ({type(exc).__name__}: {exc})".splitlines()[0]
        return None

    def _create(self, zarr, clevel: int, resume_key: str):
        try:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(str(self.partial), mode="w", attributes={  # its zarr.json never lacks a format
                "format": FORMAT, "format_version": FORMAT_VERSION, "complete": False, "resume_key": resume_key,
                "progress": self.progress})
        except OSError as exc:
            raise_if_environment(exc, self.partial)
            raise StoreError(f"cannot write store at {self.partial}: {exc.strerror or exc}") from exc
        with writing(self.partial):
            self._create_arrays(group, clevel)
        return group

    def _create_arrays(self, group, clevel: int) -> None:
        n, h, w = self.capacity, self.height, self.width
        group.create_array("images", shape=(n, h, w, 3), dtype="uint8", chunks=(1, h, w, 3),
                           shards=(self.shard_size, h, w, 3), compressors=BloscCodec(**image_blosc_config(clevel)),
                           fill_value=0)
        meta_chunk = min(_META_CHUNK, n)
        for name, dtype in (("label", "int16"), ("malignant", "bool"), ("patient", str), ("magnification", str),
                            ("source", str)):
            group.create_array(name, shape=(n,), dtype=dtype, chunks=(meta_chunk,))
        group.create_array("orig_size", shape=(n, 2), dtype="int32", chunks=(meta_chunk, 2))

    @property
    def written(self) -> int:
        """Images handed to this writer so far (checkpointed, in shard files, or in the shard being written)."""
        return int(self.progress["written"]) + len(self._unsaved) + len(self._buffer)

    @property
    def codec_config(self) -> dict:
        """The images array's Blosc configuration: what :meth:`add_encoded`'s chunks must be encoded with
        (:func:`ingest.shards.blosc_codec`)."""
        return dict(self._shards.layout.blosc)

    def add(self, image: np.ndarray, meta: ImageMeta) -> None:
        """Queue one image (H, W, 3) uint8 (encoded here); full shards are written as they fill."""
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise StoreError(f"image {meta.source} has shape {image.shape} {image.dtype}, "
                             f"store expects ({self.height}, {self.width}, 3) uint8")
        self._append(self._shards.codec.encode(np.ascontiguousarray(image)), meta)

    def add_encoded(self, blob: bytes | memoryview, meta: ImageMeta) -> None:
        """Queue one image already Blosc-encoded with :attr:`codec_config` (by a worker process); the size its
        Blosc header records must be that of one (H, W, 3) uint8 image. Its bytes are written before this returns
        (a view of a worker's shared memory may be reused once it has)."""
        nbytes = int.from_bytes(blob[4:8], "little") if len(blob) >= 16 else -1
        if nbytes != self.height * self.width * 3:
            raise StoreError(f"image {meta.source}: encoded chunk holds {nbytes} bytes, store expects "
                             f"({self.height}, {self.width}, 3) uint8 = {self.height * self.width * 3}")
        self._append(blob, meta)

    def _append(self, blob: bytes | memoryview, meta: ImageMeta) -> None:
        """Write one encoded image into the shard being written (opened at its first image)."""
        if self._stream is None:
            shard = self.written // self.shard_size
            with writing(self._shards.layout.shard_file(shard)):
                self._stream = self._shards.stream(shard)
        with writing(self._stream.path):
            self._stream.append(blob)
        self._buffer.append(meta)

    def consumed(self, n_inputs: int, skipped: list | None = None, converted: list | None = None) -> None:
        """Record that the first ``n_inputs`` inputs are handled; write the shard once it is full, and checkpoint
        there when the last checkpoint is :data:`CHECKPOINT_SECONDS` old."""
        self._pending_consumed = n_inputs
        if skipped:
            self.progress["skipped"].extend(skipped)
        if converted:
            self.progress["converted"].extend(converted)
        if len(self._buffer) >= self.shard_size:
            self._write_shard()
            if time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
                self.checkpoint()

    def _write_shard(self) -> None:
        """Publish the shard being written (:meth:`ingest.shards.ShardStream.commit`) and note the boundary there
        (what a checkpoint records); a full disk raises one error naming the shard file."""
        if self._buffer:
            stream, self._stream = self._stream, None
            with writing(stream.path):
                stream.commit()
            self._unsaved.extend(self._buffer)
            self._buffer = []
        self._boundary = (self._pending_consumed, len(self.progress["skipped"]), len(self.progress["converted"]),
                          len(self._unsaved))

    def checkpoint(self) -> None:
        """Record everything up to the last shard boundary: the metadata of the images in shard files, then (the
        commit) the progress attribute. Whatever came after the boundary is redone by a resumed run."""
        consumed, n_skipped, n_converted, n_images = self._boundary
        saved = {"consumed": consumed, "written": int(self.progress["written"]) + n_images,
                 "skipped": self.progress["skipped"][:n_skipped], "converted": self.progress["converted"][:n_converted]}
        if saved == self.group.attrs.get("progress"):
            return
        start, stop = int(self.progress["written"]), saved["written"]
        with writing(self.partial):
            if n_images:
                g, metas = self._arrays(), self._unsaved[:n_images]
                g["label"][start:stop] = np.array([m.label for m in metas], dtype=np.int16)
                g["malignant"][start:stop] = np.array([m.malignant for m in metas], dtype=bool)
                g["patient"][start:stop] = np.array([m.patient for m in metas], dtype=str)
                g["magnification"][start:stop] = np.array([m.magnification for m in metas], dtype=str)
                g["source"][start:stop] = np.array([m.source for m in metas], dtype=str)
                g["orig_size"][start:stop] = np.array([m.orig_size for m in metas], dtype=np.int32)
            self.group.attrs["progress"] = saved  # the commit: only whole shards are ever counted
        self.progress["consumed"], self.progress["written"] = consumed, stop
        del self._unsaved[:n_images]
        self._boundary = (consumed, n_skipped, n_converted, 0)
        self._last_checkpoint = time.monotonic()

    def checkpoint_on_exit(self) -> None:
        """:meth:`checkpoint` for a run on its way out after an error or an interrupt, so that a rerun resumes from
        the last shard written; a failure here (the full disk that stopped the run) is logged, never raised over
        the error that stopped it. The shard being written is dropped (its temporary file removed)."""
        if self._stream is not None:
            self._stream.abort()
            self._stream, self._buffer = None, []
        try:
            self.checkpoint()
        except Exception as exc:
            log.debug("no checkpoint on exit: %s", exc)

    def _flush(self) -> None:
        """Publish the shard being written (the last, possibly partial) and checkpoint everything."""
        self._write_shard()
        self.checkpoint()

    def _arrays(self) -> dict[str, Any]:
        """The metadata arrays, opened once (opening one reads its zarr.json)."""
        if not hasattr(self, "_meta_arrays"):
            names = ("label", "malignant", "patient", "magnification", "source", "orig_size")
            self._meta_arrays = {name: self.group[name] for name in names}
        return self._meta_arrays

    def read_meta(self) -> dict[str, np.ndarray]:
        """The metadata of everything written so far (after a final flush)."""
        self._flush()
        n, g = int(self.progress["written"]), self._arrays()
        return {"label": g["label"][:n], "patient": as_str_array(g["patient"][:n]),
                "magnification": as_str_array(g["magnification"][:n])}

    def finalize(self, attrs: dict[str, Any], split: SplitResult, overwrite: bool = False,
                 still_mine=lambda: True) -> Path:
        """Trim, write the split, set ``complete`` and rename ``<out>.partial`` -> ``<out>`` atomically, unless
        ``still_mine()`` says the store's lock was taken over meanwhile."""
        self._flush()
        n = int(self.progress["written"])
        if n == 0:
            shutil.rmtree(self.partial, ignore_errors=True)
            raise StoreError("no image could be ingested; nothing was written")
        with writing(self.partial):
            self._finish(n, attrs, split)
        if not still_mine():
            raise StoreError(f"{self.out}: this process lost the store's lock while ingesting (stalled past the "
                             "stale age?); the other writer's result stands, this one is dropped")
        return _atomic_replace(self.partial, self.out, overwrite)


    def _finish(self, n: int, attrs: dict[str, Any], split: SplitResult) -> None:
        g, meta = self.group, self._arrays()  # the metadata arrays as opened once
        for arr in (g["images"], *meta.values()):
            if arr.shape[0] != n:  # inputs were skipped: the unused tail goes
                arr.resize((n,) + tuple(arr.shape[1:]))
        patients = meta["patient"][:]  # read back: what the store holds is what is checked
        assert_patient_disjoint(patients, split.codes)
        g.create_array("split", shape=(n,), dtype="int8", chunks=(min(_META_CHUNK, n),), overwrite=True)
        g["split"][:] = split.codes
        final_attrs = dict(attrs)
        final_attrs["split"] = split.to_attrs(as_str_array(patients))
        final_attrs["progress"] = self.progress
        final_attrs["complete"] = True
        final_attrs["completed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        g.attrs.update(final_attrs)  # the last write: "complete" never precedes a whole store


def _atomic_replace(src: Path, dst: Path, overwrite: bool) -> Path:
    reason = refusal(dst, FORMAT, "image store")
    if reason:
        raise StoreError(reason)
    if dst.is_dir() and not any(dst.iterdir()):
        os.replace(src, dst)  # an empty folder is replaced by the rename itself
    elif dst.exists():
        if not overwrite:
            raise StoreError(f"{dst} exists; pass --overwrite to replace it")
        replace_dir(src, dst)
    else:
        os.replace(src, dst)
    return dst
