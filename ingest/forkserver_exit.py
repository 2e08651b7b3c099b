"""The first module a forkserver of ours preloads (:func:`ingest.workers.start_forkserver`): it makes the
forkserver end without the interpreter's teardown of the numpy, Pillow and Blosc modules it preloaded (~30 ms that
:func:`ingest.workers.stop_helpers`, and so every ``histo-ingest breakhis``, waits for).

The forkserver ends on a ``SystemExit`` once its clients are gone. The exit handler registered here then flushes
its output and calls :func:`os._exit`. Exit handlers run last-registered first, and this one is registered before
the preloaded modules are imported, so theirs (numcodecs' Blosc clean-up, logging's flush) still run before it;
what it skips is multiprocessing's own handler, which has nothing to do in a forkserver (no process of its own to
join), and the teardown itself. The exit status is then 0 even after an error in the forkserver (its traceback is
printed as before); multiprocessing never reads that status.

The handler is registered only when this module is imported by :func:`multiprocessing.forkserver.main` itself,
and it does nothing in any other process (it checks the pid): a worker forked from the forkserver inherits it but
ends by :func:`os._exit` (Python 3.11, 3.12) or clears the exit handlers before it runs (3.13).
"""

from __future__ import annotations

import atexit
import os
import sys


def imported_by_forkserver() -> bool:
    """Whether this import runs inside :func:`multiprocessing.forkserver.main` (its preload)."""
    from multiprocessing import forkserver

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


def end_now(pid: int) -> None:
    """In process ``pid`` (the forkserver), flush the output and end without the interpreter's teardown."""
    if os.getpid() != pid:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing left to save
            pass
    os._exit(0)


if imported_by_forkserver():
    atexit.register(end_now, os.getpid())
