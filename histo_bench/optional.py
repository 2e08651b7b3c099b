"""The one check for optional libraries (DALI, cuCIM, cupy, TensorRT, ONNX Runtime, dask): found without importing
them, so ``--help`` and registry listings stay fast, and a missing one is named with what to install."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

from histo_bench.errors import MissingDependencyError


def has_module(name: str) -> bool:
    """Whether ``name`` (dotted names too) is importable, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        return False


def missing_modules(modules: Sequence[str], install: str) -> str | None:
    """None when every module can be imported, else what is missing and how to install it (no import)."""
    missing = [m for m in modules if not has_module(m)]
    if missing:
        return f"{', '.join(missing)} not installed (pip install {install})"
    return None


def require(module: str, install: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError` saying what to install."""
    why = missing_modules([module], install)
    if why:
        raise MissingDependencyError(why)
    return importlib.import_module(module)


@contextlib.contextmanager
def hidden(*modules: str) -> Iterator[None]:
    """Inside the block, ``import`` of any of ``modules`` not imported yet fails with ImportError (as if it were not
    installed); afterwards they import normally again. For a library that imports an optional module whenever it
    can, in a command that never uses what it is for: zarr imports cupy (a third of zarr's import time, ~0.3 s)
    for GPU buffers, which ``histo-ingest breakhis`` never uses. What the library set up without it stays so."""
    added = [m for m in modules if m not in sys.modules]
    for m in added:
        sys.modules[m] = None  # type: ignore[assignment]  # the documented way to make an import fail
    try:
        yield
    finally:
        for m in added:
            if sys.modules.get(m, "") is None:
                del sys.modules[m]
