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

    cli_main()


if __name__ == "__main__":
    main()
