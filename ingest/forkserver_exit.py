"""The last module a forkserver of ours preloads (:func:`ingest.workers.start_forkserver`): it makes the forkserver
end at once when it is stopped, instead of tearing down the numpy, Pillow and Blosc modules it preloaded (~30 ms
that :func:`ingest.workers.stop_helpers`, and so every ``histo-ingest breakhis``, waits for).

The forkserver ends on a ``SystemExit`` once its clients are gone; the exit handler registered here then flushes
its output and calls :func:`os._exit` before the interpreter's teardown. The handler is registered only when this
module is imported by :func:`multiprocessing.forkserver.main` itself, never in another process. The workers forked
from the forkserver inherit it but never run it: they end by :func:`os._exit` too (multiprocessing's own).
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


def end_now() -> None:
    """Flush the output and end the process without the interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing left to save
            pass
    os._exit(0)


if imported_by_forkserver():
    atexit.register(end_now)
