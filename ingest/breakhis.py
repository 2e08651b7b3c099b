"""BreakHis folders -> zarr image store: discovery and validation (:mod:`ingest.breakhis_discovery`), parallel
decode (:mod:`ingest.image_pool`), patient-level splits.

Accepts the original tree (``BreaKHis_v1/histology_slides/breast/<group>/SOB/<class>/<patient>/<mag>X/*.png``)
and flat folders of BreakHis-named files: class, patient and magnification are read from the file name and,
where the tree has them, cross-checked against the folders. Every file that cannot be used is reported in one
line (path + reason), skipped and counted; the rest of the run completes.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from histo_bench.errors import ConfigError, HistoBenchError
from histo_bench.optional import hidden
from ingest import __version__
from ingest.breakhis_discovery import SYNTHETIC_MARKER, Candidate, Problem, discover  # noqa: F401 (the API)
from ingest.breakhis_names import BENIGN, CLASSES, MAGNIFICATIONS, resolve_magnifications
from ingest.decode import read_size
from ingest.image_pool import ImagePool
from ingest.output_guard import refusal, store_format
from ingest.shards import image_blosc_config
from ingest.splits import SplitConfig, patient_split

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class IngestError(HistoBenchError, RuntimeError):
    """The ingest cannot run at all (missing root, no images, unwritable output); the message says why."""


@dataclass(frozen=True)
class IngestConfig:
    """What ``histo-ingest breakhis`` does.

    Attributes:
        root: the BreakHis tree (or a flat folder of BreakHis-named images).
        out: the store directory to write (``.zarr`` by convention).
        size: (height, width) to resize every image to; None keeps the native resolution (the most common size
            in the input; near-equal sizes such as 700x456 are padded to it, the original size is kept per image).
        magnifications: which magnifications to ingest.
        split: patient-level split settings.
        workers: processes that decode and compress; 0 = one per CPU core (at most 8); 1 = all in this process.
        shard_size: images per shard file.
        clevel: zstd compression level (1 fastest .. 9 smallest; 1 with 512 KiB Blosc blocks is both faster and
            smaller than Blosc's automatic blocks at 3, see docs/ingest.md).
        overwrite: replace the histo-bench image store at ``out`` and discard any interrupted ``<out>.partial``;
            without it a complete store makes the ingest a no-op. Whatever is not a histo-bench image store (a
            folder with files in it, a slide store) is refused, never replaced
            (:func:`ingest.output_guard.refusal`).
    """

    root: str
    out: str
    size: tuple[int, int] | None = None
    magnifications: tuple[str, ...] = MAGNIFICATIONS
    split: SplitConfig = field(default_factory=SplitConfig)
    workers: int = 0
    shard_size: int = 32
    clevel: int = 1
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "magnifications", resolve_magnifications(self.magnifications))
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 8):
            raise ConfigError(f"size must be (height, width) of at least 8 px, got {self.size}")
        if self.workers < 0:
            raise ConfigError("workers must be >= 0")
        if not 1 <= self.shard_size <= 4096:
            raise ConfigError("shard_size must be in 1..4096")
        if not 1 <= self.clevel <= 9:
            raise ConfigError("clevel must be in 1..9")

    @property
    def n_workers(self) -> int:
        return self.workers or max(1, min(8, os.cpu_count() or 1))


@dataclass
class IngestSummary:
    """What an ingest did, for the CLI and for the store's attrs."""

    store: str
    images: int = 0
    skipped: list[Problem] = field(default_factory=list)
    converted: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    already_complete: bool = False
    resumed: bool = False
    split_notes: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_attrs(self) -> dict[str, Any]:
        return {"images": self.images, "skipped": [asdict(p) for p in self.skipped],
                "converted": [asdict(p) for p in self.converted], "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 2), "resumed": self.resumed}


def _target_size(config: IngestConfig, candidates: list[Candidate]) -> tuple[int, int]:
    if config.size is not None:
        return tuple(config.size)  # type: ignore[return-value]
    sizes = Counter(s for s in (read_size(str(c.path)) for c in candidates[:2000]) if s is not None)
    if not sizes:
        raise IngestError("none of the first images could be read; cannot choose a store size (pass --size)")
    return sizes.most_common(1)[0][0]



def _write_all(writer, results, candidates: list[Candidate], start: int, summary: IngestSummary,
               progress: Progress | None) -> None:
    """Hand every worker result (from input ``start`` on) to the writer, noting skipped and converted files."""
    from ingest.store_writer import ImageMeta

    total = len(candidates)
    if progress:
        progress(start, total)
    try:
        for i, result in enumerate(results, start=start):
            cand = candidates[i]
            skipped, converted = [], []
            if isinstance(result, str):
                problem = Problem(cand.rel, result)
                log.warning("skipped %s", problem.line())
                skipped.append(asdict(problem))
                summary.skipped.append(problem)
            else:
                n = cand.name
                writer.add_encoded(result.blob, ImageMeta(
                    label=CLASSES.index(n.class_name), malignant=n.class_name not in BENIGN, patient=n.patient,
                    magnification=n.magnification, source=cand.rel, orig_size=result.orig_size))
                for note in result.notes:
                    problem = Problem(cand.rel, note)
                    log.info("converted %s", problem.line())
                    converted.append(asdict(problem))
                    summary.converted.append(problem)
            writer.consumed(i + 1, skipped, converted)
            if progress:
                progress(i + 1, total)
    except BaseException:  # an interrupt, a full disk, a broken worker: keep every shard already written
        writer.checkpoint_on_exit()
        raise


def _resume_key(config: IngestConfig, candidates: list[Candidate], size: tuple[int, int]) -> str:
    h = hashlib.sha256()
    cfg = asdict(config)
    for k in ("workers", "overwrite", "out"):
        cfg.pop(k)
    h.update(json.dumps([cfg, size], sort_keys=True, default=str).encode())
    for c in candidates:
        st = c.path.stat()
        h.update(f"{c.rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def data_origin(root: Path) -> dict[str, Any]:
    """Where the data came from: the generator's marker for synthetic trees, else 'user-provided'."""
    for marker in (root / SYNTHETIC_MARKER, root / "BreaKHis_v1" / SYNTHETIC_MARKER):
        if marker.exists():
            info = json.loads(marker.read_text())
            return {"kind": "synthetic", **info}
    return {"kind": "user-provided", "root": str(root.resolve())}


def _import_store_modules(command: bool) -> None:
    """Import the store modules (ingest.store_writer, zarr: 0.4-0.8 s of CPU). For a new store, called once the
    workers' first batches are submitted, so that they decode meanwhile (a resumed store must be opened first to
    know where to start, so there the workers wait for it). Not in a thread beside discovery and the size
    pass: each file those open hands the GIL to the importing thread for up to a switch interval (5 ms), which made
    the two passes ~15x slower (0.2 s instead of 15 ms on 432 files) and held back the workers' start.

    ``command``: for the ``histo-ingest`` command, whose process ends with the ingest (what zarr sets up stays so),
    zarr is imported without cupy, which it imports for GPU buffers the ingest never uses (~0.25 s,
    :func:`histo_bench.optional.hidden`), and once imported the ~60k objects of the modules are moved out of the
    garbage collector's sight (:func:`gc.freeze`), so the collections made on the way out (to release the pool's
    semaphores, :meth:`ingest.image_pool.ImagePool.close`) take under 1 ms instead of ~35 ms each."""
    with hidden("cupy") if command else contextlib.nullcontext():
        import ingest.store_writer  # noqa: F401
    if command:
        gc.freeze()


def ingest_breakhis(config: IngestConfig, progress: Progress | None = None, command: bool = False) -> IngestSummary:
    """Ingest a BreakHis tree into a zarr store; see :class:`IngestConfig`. Raises :class:`IngestError` when nothing
    can be done; individual bad files are skipped and listed in the returned summary. ``command``: called by the
    ``histo-ingest`` command, whose process ends with it (then zarr is imported without cupy, see
    :func:`_import_store_modules`)."""
    t0 = time.perf_counter()
    root, out = Path(config.root), Path(os.path.abspath(config.out))  # `--out .` names the current folder
    if not root.exists():
        raise IngestError(f"{root}: no such directory")
    if not root.is_dir():
        raise IngestError(f"{root}: not a directory")
    from ingest.disk import raise_if_environment
    from ingest.store_paths import FORMAT, is_complete, partial_path, partial_refusal, store_lock

    summary = IngestSummary(store=str(out))
    reason = refusal(out, FORMAT, "image store")
    if reason:
        raise IngestError(reason)
    if is_complete(out) and not config.overwrite:
        log.info("%s is already complete; nothing to do (pass --overwrite to rebuild it)", out)
        store_lock(out).clear_if_stale()  # a run killed between finishing the store and releasing its lock
        summary.already_complete = True
        return summary
    if store_format(out) == FORMAT and not is_complete(out) and not config.overwrite:
        raise IngestError(f"{out} is an incomplete histo-bench store; pass --overwrite to replace it")
    lock = store_lock(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(on_wait=lambda holder: log.warning(
            "%s is being written by %s; waiting for it", out, holder.describe() if holder else "another process"))
    except OSError as exc:
        raise_if_environment(exc, lock.path)
        raise IngestError(f"cannot write {lock.path}: {exc.strerror or exc}") from exc
    with lock:
        if is_complete(out) and not config.overwrite:  # the process we waited for finished it
            log.info("%s was completed by another process; nothing to do", out)
            summary.already_complete = True
            return summary
        reason = partial_refusal(partial_path(out))  # checked under the lock: no other writer is mid-way
        if reason:
            raise IngestError(reason)
        candidates = _candidates(config, root, summary)  # while the forkserver starts up (ingest.__main__)
        size = _target_size(config, candidates)
        with ImagePool(config.n_workers) as pool:
            return _ingest_locked(config, root, out, summary, t0, progress, lock.still_mine, pool, candidates,
                                  size, command)


def _candidates(config: IngestConfig, root: Path, summary: IngestSummary) -> list[Candidate]:
    """The usable files under ``root`` (each unusable one logged and noted in ``summary``); raises when none."""
    candidates, problems = discover(root, config.magnifications)
    for p in problems:
        log.warning("skipped %s", p.line())
    summary.skipped.extend(problems)
    if not candidates:
        detail = f" ({len(problems)} file(s) were not usable, see above)" if problems else ""
        raise IngestError(f"no BreakHis images found under {root}{detail}")
    return candidates


def _ingest_locked(config: IngestConfig, root: Path, out: Path, summary: IngestSummary, t0: float,
                   progress: Progress | None, still_mine, pool: ImagePool, candidates: list[Candidate],
                   size: tuple[int, int], command: bool) -> IngestSummary:
    """The ingest proper, run by the one process that holds the store's lock."""
    from ingest.disk import raise_if_environment
    from ingest.store_paths import partial_path

    tasks = [(str(c.path), size, config.size is not None) for c in candidates]
    # A new store starts at the first image: the workers decode while this process creates the store. A resumed
    # one must first be opened to know where it stopped.
    codec_config = image_blosc_config(config.clevel)
    fresh = config.overwrite or not partial_path(out).exists()
    results = pool.encoded(tasks, codec_config) if fresh else None
    _import_store_modules(command)  # while the workers decode
    from ingest.store import StoreError
    from ingest.store_writer import ImageStoreWriter

    try:
        writer = ImageStoreWriter(out, capacity=len(candidates), height=size[0], width=size[1],
                                  shard_size=config.shard_size, clevel=config.clevel,
                                  resume_key=_resume_key(config, candidates, size), discard=config.overwrite)
    except (StoreError, OSError) as exc:
        raise_if_environment(exc, partial_path(out))
        raise IngestError(f"cannot write {partial_path(out)}: {exc}") from exc
    summary.resumed = writer.resumed
    start = int(writer.progress["consumed"])
    summary.skipped.extend(Problem(**p) for p in writer.progress["skipped"])
    summary.converted.extend(Problem(**p) for p in writer.progress["converted"])
    if results is not None and (start or writer.codec_config != codec_config):  # cannot happen: created above
        raise IngestError(f"{partial_path(out)}: the new store starts at input {start} with codec "
                          f"{writer.codec_config}, not at 0 with {codec_config}")
    if results is None:
        results = pool.encoded(tasks[start:], writer.codec_config)

    _write_all(writer, results, candidates, start, summary, progress)
    pool.release()  # every result is in: the workers exit while the store is finalized
    meta = writer.read_meta()
    split = patient_split(meta["patient"], meta["label"], CLASSES, config.split)
    for note in split.notes:
        log.info("split: %s", note)
    summary.split_notes = split.notes
    summary.images = writer.written
    summary.seconds = time.perf_counter() - t0
    attrs = {
        "classes": list(CLASSES),
        "magnifications": [m for m in MAGNIFICATIONS if m in config.magnifications],
        "height": size[0], "width": size[1],
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "origin": data_origin(root),
        "generator": f"histo-bench {__version__} ingest.breakhis",
        "summary": summary.to_attrs(),
    }
    try:
        writer.finalize(attrs, split, overwrite=config.overwrite, still_mine=still_mine)
    except StoreError as exc:
        raise IngestError(str(exc)) from exc
    return summary
