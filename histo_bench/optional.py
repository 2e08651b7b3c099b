"""The one check for optional libraries (DALI, cuCIM, cupy, TensorRT, ONNX Runtime, dask): found without importing
them, so ``--help`` and registry listings stay fast, and a missing one is named with what to install."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
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
