"""``histo-ingest`` and ``python -m ingest``: start the BreakHis workers' forkserver before the CLI is imported.

``histo-ingest breakhis`` decodes in worker processes forked from a forkserver that imports the decoder (numpy,
Pillow, Blosc) once. Started here, from the command line alone, that start-up (~0.2 s of CPU) runs on another core
while this process imports the CLI (typer, rich: another ~0.2 s), instead of after it. This module imports nothing
heavy, because every worker runs the main script again (multiprocessing's spawn preparation imports
``ingest.__main__`` from the ``histo-ingest`` script; ``python -m ingest`` is skipped): the CLI itself is imported
only in :func:`main`, never by a worker.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: Options of ``histo-ingest`` itself, before the command (flags only: none takes a value).
_GLOBAL_FLAGS = frozenset({"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"})


def uses_workers(argv: Sequence[str]) -> bool:
    """Whether the command line runs ``breakhis`` with worker processes (any ``--workers`` but 1)."""
    args = list(argv)
    while args and args[0] in _GLOBAL_FLAGS:
        args.pop(0)
    if not args or args[0] != "breakhis" or "--help" in args:
        return False
    for k, arg in enumerate(args):
        if arg == "--workers" and k + 1 < len(args):
            return args[k + 1].strip() != "1"
        if arg.startswith("--workers="):
            return arg.partition("=")[2].strip() != "1"
    return True


def main() -> None:
    if uses_workers(sys.argv[1:]):
        from ingest.workers import start_forkserver

        start_forkserver(("ingest.image_pool",))  # what ingest.image_pool.ImagePool preloads
    from ingest.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as exc:
        quick_exit(exc.code)
        raise
    quick_exit(0)


def quick_exit(code: object) -> None:
    """End the process at once once a command has ended, without the interpreter's teardown of its ~900 modules
    (0.2-0.3 s after a BreakHis ingest, as long as a quarter of a small ingest's overhead): output is flushed and
    every exit handler runs first (:mod:`atexit`: logging, multiprocessing, zarr), so all that is skipped is
    freeing memory the kernel frees anyway. Returns (for a normal exit) where that cannot be done safely: a
    non-daemon thread still running, a message as exit code, or no :func:`atexit._run_exitfuncs`."""
    import atexit
    import os
    import threading

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if run_exit_handlers is None or others or not (code is None or isinstance(code, int)):
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): what the interpreter would have done anyway
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
