"""Worker processes that never outlive their parent: the one way ``ingest`` starts a process pool.

* **Start method**: ``forkserver`` where the platform has it, else ``spawn``; never ``fork`` from a process that by
  then runs threads (DALI, cuCIM, ONNX Runtime, OpenMP, zarr I/O), which can deadlock or crash the child.
* **Parent death**: every worker runs a watchdog thread on the process that made the pool (a Linux ``pidfd`` when
  available, else a 0.2 s poll). When that process dies, even by SIGKILL, the worker exits at once, so a killed
  ``histo-ingest`` leaves nothing running that could race an immediate rerun; the forkserver and the resource
  tracker then see their pipes close and exit too.
* **Clean exit**: :func:`stop_helpers` stops the forkserver and resource-tracker processes that multiprocessing
  keeps for the life of the interpreter, so a command that returns leaves no process behind.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import select
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from histo_bench.files import pid_alive

log = logging.getLogger(__name__)

#: How often a worker without pidfd support checks that its parent is alive.
POLL_SECONDS = 0.2


def start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def mp_context():
    """The multiprocessing context every pool of the project uses (see the module doc)."""
    return multiprocessing.get_context(start_method())


def _wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` has exited (a zombie counts as exited)."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(pid)
    if pidfd is not None:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)  # readable once the process has exited
            while not poller.poll():
                pass
        finally:
            os.close(pidfd)
        return
    while pid_alive(pid):
        threading.Event().wait(POLL_SECONDS)


def watch_parent(parent_pid: int) -> None:
    """Start a daemon thread that ends this process as soon as ``parent_pid`` exits."""

    def watchdog() -> None:
        _wait_for_exit(parent_pid)
        os._exit(1)

    threading.Thread(target=watchdog, name=f"watch-parent-{parent_pid}", daemon=True).start()


def _init_worker(parent_pid: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    watch_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def process_pool(workers: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple[Any, ...] = (), preload: tuple[str, ...] = ()) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes that exit when this process dies (see the module doc);
    ``initializer(*initargs)`` runs in each worker after its watchdog is set up. ``preload`` names modules the
    forkserver imports once, when it starts, so that each worker forked from it has them already (no effect on a
    forkserver already running, or with ``spawn``)."""
    ctx = mp_context()
    if preload:
        start_forkserver(preload)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(os.getpid(), initializer, initargs))


def start_forkserver(preload: tuple[str, ...] = ()) -> None:
    """Start the forkserver now, importing ``preload`` in it, so that it starts up beside whatever this process
    does next (on another core) and every worker forked from it has those modules already. Nothing happens when a
    forkserver is already running or the start method is ``spawn``; :func:`stop_helpers` stops it (a forkserver
    that preloads modules ends without tearing them down, :mod:`ingest.forkserver_exit`)."""
    if start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        return
    if preload:
        mp_context().set_forkserver_preload(["ingest.forkserver_exit", *preload])
    forkserver.ensure_running()


def release_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s traceback chain and collect garbage, so the
    process pools and queues a failed command left in them are finalised now (their semaphores unregistered)
    rather than at exit, after :func:`stop_helpers` has stopped the resource tracker (which would then warn about
    "leaked" semaphores and print tracebacks). Used on the way out of a command that ended on an error."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        todo.extend((err.__cause__, err.__context__))
    gc.collect()


def run_app(app: Callable[[], Any]) -> None:
    """Run a CLI app (``histo-ingest``, ``histo-bench``) as a command: on the way out, pools and loader workers the
    command left are finalised (:func:`release_frames`) and then no forkserver or resource tracker outlives it
    (:func:`stop_helpers`)."""
    try:
        app()
    except SystemExit as exc:  # a finished command, or one that ended on an error (printed in one line)
        release_frames(exc)
        raise
    finally:
        stop_helpers()


def stop_helpers() -> None:
    """Stop multiprocessing's forkserver and resource tracker if this process started them (they would otherwise
    linger until the interpreter exits). Called by the CLIs when a command ends; it does nothing while a child
    process of this one is alive (the tracker would wait for it). These are private multiprocessing methods
    (CPython 3.8 to 3.13 have them); where they are missing, the helpers exit when this process does."""
    if multiprocessing.active_children():
        return
    with contextlib.suppress(Exception):
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        if server is not None and getattr(server, "_forkserver_pid", None) is not None:
            server._stop()
    with contextlib.suppress(Exception):
        from multiprocessing import resource_tracker

        tracker = getattr(resource_tracker, "_resource_tracker", None)
        if tracker is not None and getattr(tracker, "_pid", None) is not None:
            tracker._stop()
