"""Many slides: in this process, in a local process pool, or as tasks on an existing Dask cluster.

Each slide is one task (:func:`ingest.tiling.tile_slide`), writing its own group of the store, so tasks share
nothing but the store folder. Finished slides are skipped on a rerun; interrupted ones are redone. With a local
pool, workers report per-slide tile progress through a queue; Dask tasks report when they finish. A full disk or a
read-only output in any worker ends the run (slides not yet started are cancelled) with that one error.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from histo_bench.errors import HistoBenchError
from histo_bench.optional import require
from ingest.disk import environment_failure
from ingest.slide_store import init_store
from ingest.tiling import SlideResult, TileConfig, slide_id_for, tile_slide
from ingest.workers import mp_context, process_pool

log = logging.getLogger(__name__)


#: How long to wait for a Dask scheduler to answer.
SCHEDULER_TIMEOUT = "10s"


class TileRunError(HistoBenchError, RuntimeError):
    """The run cannot start (no slides, unwritable store, unreachable scheduler); the message says why."""


@dataclass
class TileEvents:
    """Callbacks the CLI uses to draw progress (all optional)."""

    slide_started: Callable[[str], None] = lambda sid: None
    slide_progress: Callable[[str, int, int], None] = lambda sid, done, total: None
    slide_finished: Callable[[SlideResult], None] = lambda result: None


@dataclass
class TileRunSummary:
    """Every slide's result plus totals."""

    store: str
    results: list[SlideResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def tiles(self) -> int:
        return sum(sum(r.tiles.values()) for r in self.results if r.status == "done")

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0

    def stage_seconds(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for r in self.results:
            for k, v in r.timings.items():
                total[k] = total.get(k, 0.0) + v
        return total


def _check_unique_ids(slides: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for p in slides:
        sid = slide_id_for(p)
        if sid in seen:
            raise TileRunError(f"two slides would share the store name {sid!r}: {seen[sid]} and {p}; rename one")
        seen[sid] = p


#: How often a run that found a slide locked by another worker checks on it again (seconds).
BUSY_POLL_SECONDS = 1.0

_worker_queue = None  # a pool worker's progress queue, set by _set_queue when the worker starts


def _set_queue(q) -> None:
    global _worker_queue
    _worker_queue = q


def _pool_task(path: str, store: str, config: TileConfig, overlay_dir: str | None) -> SlideResult:
    q = _worker_queue
    q.put(("start", slide_id_for(Path(path)), 0, 0))
    return tile_slide(path, store, config, overlay_dir=overlay_dir,
                      progress=lambda sid, done, total: q.put(("progress", sid, done, total)))


def run_tiling(slides: list[Path], store: str | Path, config: TileConfig, *, workers: int = 1,
               scheduler: str | None = None, overlay_dir: str | Path | None = None,
               events: TileEvents | None = None) -> TileRunSummary:
    """Tile ``slides`` into ``store``: serially (``workers=1``), on a local process pool, or on the Dask cluster at
    ``scheduler`` (``tcp://host:port``). A slide another process is tiling (its lock is held) is left to it and
    checked again once the others are done: the run ends when every slide has been finished by someone."""
    events = events or TileEvents()
    store = Path(os.path.abspath(store))  # `--out .` names the current folder
    if not slides:
        raise TileRunError("no slides to tile")
    _check_unique_ids(slides)
    try:
        init_store(store)
    except Exception as exc:
        raise TileRunError(str(exc)) from exc
    t0 = time.perf_counter()
    summary = TileRunSummary(store=str(store))
    ov = str(overlay_dir) if overlay_dir is not None else None
    if scheduler:
        results = _run_dask(slides, store, config, scheduler, ov, events)
    elif workers <= 1 or len(slides) == 1:
        results = []
        for p in slides:
            events.slide_started(slide_id_for(p))
            results.append(_finished(tile_slide(p, store, config, overlay_dir=ov, progress=events.slide_progress),
                                     events))
    else:
        results = _run_pool(slides, store, config, workers, ov, events)
    results = _wait_for_busy(results, store, config, ov, events)
    order = {str(p): i for i, p in enumerate(slides)}
    summary.results = sorted(results, key=lambda r: order.get(r.path, 0))
    summary.seconds = time.perf_counter() - t0
    return summary


def _finished(result: SlideResult, events: TileEvents) -> SlideResult:
    if result.status != "busy":
        events.slide_finished(result)
    return result


def _wait_for_busy(results: list[SlideResult], store, config, overlay_dir, events) -> list[SlideResult]:
    """Come back to the slides another process held: wait while it works, take over if its lock goes stale."""
    done = [r for r in results if r.status != "busy"]
    busy = [r for r in results if r.status == "busy"]
    for r in busy:
        log.warning("%s: %s; waiting for it to finish", r.path, r.error)
    waited = 0.0
    while busy:
        time.sleep(BUSY_POLL_SECONDS)
        waited += BUSY_POLL_SECONDS
        if waited % 60 < BUSY_POLL_SECONDS:
            log.warning("still waiting (%.0f s) for %d slide(s) another process is tiling: %s", waited, len(busy),
                        ", ".join(r.slide_id for r in busy))
        still = []
        for r in busy:
            res = tile_slide(r.path, store, config, overlay_dir=overlay_dir, progress=events.slide_progress)
            (still if res.status == "busy" else done).append(_finished(res, events))
        busy = still
    return done


def _run_pool(slides, store, config, workers, overlay_dir, events) -> list[SlideResult]:
    q = mp_context().Queue()
    results: list[SlideResult] = []
    try:
        with process_pool(min(workers, len(slides)), _set_queue, (q,)) as pool:
            futures = {pool.submit(_pool_task, str(p), str(store), config, overlay_dir): p for p in slides}
            pending = set(futures)
            try:
                while pending:
                    _drain(q, events)
                    finished = [f for f in pending if f.done()]
                    for fut in finished:
                        pending.discard(fut)
                        _drain(q, events)
                        results.append(_finished(_result_or_failure(fut, futures[fut]), events))
                    if pending:
                        time.sleep(0.05)
            except BaseException:  # a full disk (or Ctrl-C): slides not started yet are not started at all
                for fut in pending:
                    fut.cancel()
                raise
            _drain(q, events)
    finally:
        q.close()
        q.join_thread()
    return results


def _drain(q, events: TileEvents) -> None:
    while True:
        try:
            kind, sid, done, total = q.get_nowait()
        except queue.Empty:
            return
        if kind == "start":
            events.slide_started(sid)
        else:
            events.slide_progress(sid, done, total)


def _result_or_failure(fut, path: Path) -> SlideResult:
    """The slide's result; a worker that died (e.g. killed for memory) fails only its slide, a full disk or a
    read-only output (re-raised by the worker, errno kept through pickling) ends the run."""
    try:
        return fut.result()
    except Exception as exc:
        # the file being written when the worker says which, else the slide (whose output could not be written)
        failure = environment_failure(exc, getattr(exc, "filename", None) or path)
        if failure is not None:
            raise failure from None
        return SlideResult(path=str(path), slide_id=slide_id_for(path), status="failed",
                           error=f"worker failed: {type(exc).__name__}: {exc}")


def _run_dask(slides, store, config, scheduler, overlay_dir, events) -> list[SlideResult]:
    distributed = require("distributed", "'histo-bench[cluster]'  # --scheduler: an existing Dask cluster")
    Client, dask_as_completed = distributed.Client, distributed.as_completed
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
    except OSError as exc:
        raise TileRunError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    results = []
    try:
        log.info("tiling %d slides on the Dask cluster at %s (%d workers)", len(slides), scheduler,
                 len(client.scheduler_info().get("workers", {})))
        futures = [client.submit(tile_slide, str(p), str(store), config, overlay_dir=overlay_dir, pure=False,
                                 key=f"tile-{i}-{slide_id_for(p)}") for i, p in enumerate(slides)]
        by_key = {f.key: p for f, p in zip(futures, slides, strict=True)}
        for p in slides:
            events.slide_started(slide_id_for(p))
        for fut in dask_as_completed(futures):
            results.append(_finished(_result_or_failure(fut, by_key[fut.key]), events))
    finally:
        client.close()
    return results

