"""``histo-ingest`` and ``python -m ingest``: start the BreakHis workers' forkserver before the CLI is imported.

``histo-ingest breakhis`` decodes in worker processes forked from a forkserver that imports the decoder (numpy,
Pillow, Blosc) once. Started here, from the command line alone, that start-up (~0.2 s of CPU) runs on another core
while this process imports the CLI (typer, rich: another ~0.2 s), instead of after it. This module imports nothing
heavy, because every worker runs the main script again (multiprocessing's spawn preparation imports
``ingest.__main__`` from the ``histo-ingest`` script; ``python -m ingest`` is skipped): the CLI itself is imported
only in :func:`main`, never by a worker. A launcher of its own must call :func:`main` under
``if __name__ == "__main__":``, or each worker would run the command again.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _global_flag(arg: str) -> bool:
    """Whether ``arg`` is an option of ``histo-ingest`` itself (``-v`` counted, ``-q``, combined: ``-qv``)."""
    return arg in ("--verbose", "--quiet") or (len(arg) > 1 and arg[0] == "-" and set(arg[1:]) <= {"v", "q"})


def uses_workers(argv: Sequence[str]) -> bool:
    """Whether the command line runs ``breakhis`` with worker processes (any ``--workers`` but 1; the last one
    given counts, as for the CLI). A guess: where it is wrong, ``breakhis`` starts the forkserver itself."""
    args = list(argv)
    while args and _global_flag(args[0]):
        args.pop(0)
    if not args or args[0] != "breakhis" or "--help" in args:
        return False
    workers = None
    for k, arg in enumerate(args):
        if arg == "--workers" and k + 1 < len(args):
            workers = args[k + 1]
        elif arg.startswith("--workers="):
            workers = arg.partition("=")[2]
    return workers is None or workers.strip() != "1"


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
        except (BrokenPipeError, ValueError):  # a closed pipe (`| head`): ignored by the interpreter too
            pass
        except OSError:  # a full disk, say: the interpreter's own exit reports it (and exits 120)
            return
    os._exit(code or 0)


if __name__ == "__main__":
    main()
